"""The nightly parity job end to end (`bert_ref.scale`): a truth that is right, packed inputs for the
port, dataset compares with the oracle's verdicts, a compact truth, and hostile inputs and
directories.

A tiny random-weight preset (float64 weights) and a few dozen records keep it fast; servers used
to attack the client listen on 127.0.0.1 only and stop by themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from needs import need

need("dask", 'pip install "bert-ref[scale]"')

from bert_ref import BertBackbone  # noqa: E402
from bert_ref.scale.run import run_dataset  # noqa: E402
from bert_ref.scale.shards import MANIFEST  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "the", "cat", "sat", "on", "mat", "##s", "dog", "a"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "a", "cats", "xyz", "The", "CAT"]
MAX_LEN = 24


def make_preset(d: Path, name: str = "tiny", dtype: str = "float64") -> Path:
    model = BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=MAX_LEN, seed=0, dtype=dtype)
    model.preset_metadata = {"vocabulary": VOCAB, "lowercase": True}
    model.save_to_preset(d / name)
    return d / name


def write_jsonl(path: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        rec = {"text": " ".join(rng.choice(WORDS, int(rng.integers(1, 9))))}
        if i % 3 == 0:
            rec["text_pair"] = " ".join(rng.choice(WORDS, 3))
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("nightly")
    make_preset(d)
    write_jsonl(d / "data.jsonl")
    return d


def run(d: Path, out: Path, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("scheduler", "synchronous")
    kw.setdefault("dtype", "float64")
    return run_dataset(str(kw.pop("preset", d / "tiny")), str(kw.pop("dataset", d / "data.jsonl")), out, **kw)


# -- a truth that is right ---------------------------------------------------------------------


def test_editing_the_vocabulary_changes_the_job_and_resuming_is_refused(data, tmp_path):
    preset = tmp_path / "tiny"
    shutil.copytree(data / "tiny", preset)
    out = tmp_path / "run"
    m = run(data, out, preset=preset)
    assert m["job"]["tokenizer_sha256"]
    vocab = preset / "assets" / "tokenizer" / "vocabulary.txt"
    vocab.write_text(vocab.read_text().replace("\ncat\n", "\nkat\n"))
    with pytest.raises(ValueError, match="tokenizer_sha256"):
        run(data, out, preset=preset)


def test_changing_a_tokenizer_setting_changes_the_job(data, tmp_path):
    preset = tmp_path / "tiny"
    shutil.copytree(data / "tiny", preset)
    out = tmp_path / "run"
    run(data, out, preset=preset)
    meta = json.loads((preset / "metadata.json").read_text())
    meta["tokenizer"]["lowercase"] = False
    (preset / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="tokenizer_sha256"):
        run(data, out, preset=preset)


def test_the_dataset_hash_is_over_its_content_not_its_name(data, tmp_path):
    out = tmp_path / "run"
    first = run(data, out)
    renamed = tmp_path / "renamed.jsonl"
    shutil.copyfile(data / "data.jsonl", renamed)
    again = run(data, out, dataset=renamed)
    assert again["job"]["dataset_sha256"] == first["job"]["dataset_sha256"]
    assert again["timings"]["shards_computed"] == 0
    import hashlib
    assert first["job"]["dataset_sha256"] == hashlib.sha256((data / "data.jsonl").read_bytes()).hexdigest()
    assert json.loads((out / MANIFEST).read_text())["complete"]


# -- packed inputs for the port ----------------------------------------------------------------

from safetensors.numpy import load_file, save_file  # noqa: E402

from bert_ref.scale.compare import compare_dataset  # noqa: E402
from bert_ref.scale.run import pack_dataset  # noqa: E402
from bert_ref.scale.shards import INPUT_KEYS, RECORD_KEYS, read_shard  # noqa: E402
from bert_ref.text.tokenizer import BertTokenizer  # noqa: E402

# Float32 rounding of this 2-layer, width-16 network: our float32 run differs from the float64 truth
# by about 1e-7; a port that computes exactly what our float32 policy computes is at 1.00x its floor.


def texts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def port_loop(packed: Path, out: Path, preset: Path, *, dtype: str = "float32", with_ids: bool = True,
              **bug: Any) -> Path:
    """The porter's loop of docs/dataset.md: read the pack shards, run "the port" batch by batch
    (here our own model in `dtype`, optionally with a planted bug: a config field changed), write
    candidate shards with Hugging Face names, record_index and the ids it ran on."""
    base = BertBackbone.from_preset(preset, dtype=dtype)
    config = {**base.config.to_dict(), **bug}
    model = BertBackbone(**config, dtype=dtype, weights=base.weights)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(packed.glob("shard-*.safetensors")):
        s = load_file(str(path))
        for b in np.unique(s["batch"]):
            rows = np.flatnonzero(s["batch"] == b)
            w = int(s["length"][rows].max())
            feed = {"input_ids": s["token_ids"][rows, :w].astype(np.int64),
                    "token_type_ids": s["segment_ids"][rows, :w].astype(np.int64),
                    "attention_mask": s["padding_mask"][rows, :w].astype(np.int64)}
            y = model({"token_ids": feed["input_ids"], "segment_ids": feed["token_type_ids"],
                       "padding_mask": feed["attention_mask"]})
            arrays = {"record_index": s["record_index"][rows], "last_hidden_state": y["sequence_output"],
                      "pooler_output": y["pooled_output"], **(feed if with_ids else {})}
            save_file(arrays, str(out / f"{path.stem}-{b:03d}.safetensors"))
    return out


@pytest.fixture(scope="module")
def runs(data):
    """The packed inputs, the float64 truth and the float32 floor of the module's dataset."""
    d = data
    opts = dict(shard_size=8, batch_tokens=40, scheduler="synchronous", progress=False)
    pack_dataset(str(d / "tiny"), d / "data.jsonl", d / "packed", **opts)
    run_dataset(str(d / "tiny"), d / "data.jsonl", d / "truth", dtype="float64", **opts)
    run_dataset(str(d / "tiny"), d / "data.jsonl", d / "f32", dtype="float32", **opts)
    run_dataset(str(d / "tiny"), d / "data.jsonl", d / "f16", dtype="float16", **opts)
    run_dataset(str(d / "tiny"), d / "data.jsonl", d / "f16e", dtype="float16", ensemble=True, **opts)
    port_loop(d / "packed", d / "port_ok", d / "tiny")
    return d


def cmp(d: Path, candidate, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("batch_tokens", 40)
    kw.setdefault("scheduler", "synchronous")
    kw.setdefault("progress", False)
    return compare_dataset(str(d / "tiny"), d / "data.jsonl", candidate, **kw)


def test_pack_writes_the_inputs_of_run_with_the_same_sharding_order_and_batching(runs):
    d = runs
    packed = json.loads((d / "packed" / MANIFEST).read_text())
    truth = json.loads((d / "truth" / MANIFEST).read_text())
    assert packed["kind"] == "pack" and packed["job"]["policy"] is None and packed["job"]["outputs"] == []
    assert [e["records"] for e in packed["shards"]] == [e["records"] for e in truth["shards"]]
    tok = BertTokenizer.from_preset(d / "tiny")
    recs = texts(d / "data.jsonl")
    batches = 0
    for ep, et in zip(packed["shards"], truth["shards"], strict=True):
        p, t = load_file(str(d / "packed" / ep["file"])), load_file(str(d / "truth" / et["file"]))
        assert set(p) == set(RECORD_KEYS + INPUT_KEYS)  # no outputs
        for key in RECORD_KEYS + INPUT_KEYS:  # run's shards carry the same input arrays
            np.testing.assert_array_equal(p[key], t[key])
        batches += len(np.unique(p["batch"]))
        for j, r in enumerate(p["record_index"]):  # the ids are the tokenizer's own packing
            rec = recs[r]
            want = tok([rec["text"]], [rec["text_pair"]] if "text_pair" in rec else None, sequence_length=MAX_LEN)
            n = int(p["length"][j])
            np.testing.assert_array_equal(p["token_ids"][j, :n], want["token_ids"][0, :n])
            np.testing.assert_array_equal(p["segment_ids"][j, :n], want["segment_ids"][0, :n])
            assert p["padding_mask"][j].sum() == n and not p["token_ids"][j, n:].any()
        # Batches hold records of similar length within the token budget, numbered in length order.
        for b in np.unique(p["batch"]):
            rows = np.flatnonzero(p["batch"] == b)
            assert len(rows) == 1 or len(rows) * p["length"][rows].max() <= 40
    assert batches > len(packed["shards"])  # the budget really split shards into several batches


def test_a_port_run_on_the_pack_shards_passes_and_a_port_with_a_wrong_epsilon_fails(runs):
    d = runs
    ok = cmp(d, d / "port_ok", reference=d / "truth", floor_from=d / "f32", precision="float32")
    assert ok.passed, ok.format_table()
    for e in ok.report:  # the port computes what our float32 computes: exactly its floor
        assert e.floor_ratio == pytest.approx(1.0)
    # (A tanh GELU is below what float32 can show on this random-weight model: its pre-activations
    # are near 0, where the two GELUs agree; the MiniLM test below shows that bug.)
    eps = port_loop(d / "packed", d / "port_eps", d / "tiny", layer_norm_epsilon=1e-3)
    bad = cmp(d, eps, reference=d / "truth", floor_from=d / "f32", precision="float32")
    assert not bad.passed and not bad.problems  # a wrong port, not a misaligned one
    assert bad.report.first_failure is not None and bad.report.first_failure.floor_ratio > 4


def test_candidate_ids_that_differ_from_the_packed_ids_name_the_record(runs, tmp_path):
    d = runs
    cand = tmp_path / "cand"
    shutil.copytree(d / "port_ok", cand)
    victim = max(cand.glob("*.safetensors"), key=lambda f: load_file(str(f))["input_ids"].shape[0])
    arrays = load_file(str(victim))
    arrays["input_ids"][2, 1] += 1
    rec = int(arrays["record_index"][2])
    save_file(arrays, str(victim))
    report = cmp(d, cand, reference=d / "truth", floor_from=d / "f32", precision="float32")
    assert not report.passed  # the outputs are right, the inputs are not
    src = f"data.jsonl:{rec + 1}"
    assert any(f"at 1 record(s); the first is record {rec} ({src}): token_ids[1] is" in p for p in report.problems)


def test_a_length_sorted_candidate_without_record_index_is_diagnosed_as_misaligned(runs, tmp_path):
    d = runs
    parts = [load_file(str(f)) for f in sorted((d / "port_ok").glob("*.safetensors"))]
    width = max(p["last_hidden_state"].shape[1] for p in parts)
    seq = np.concatenate([np.pad(p["last_hidden_state"], [(0, 0), (0, width - p["last_hidden_state"].shape[1]),
                                                          (0, 0)]) for p in parts])
    pooled = np.concatenate([p["pooler_output"] for p in parts])
    lengths = np.concatenate([p["attention_mask"].sum(1) for p in parts])
    order = np.argsort(lengths, kind="stable")
    np.savez(tmp_path / "sorted.npz", sequence_output=seq[order], pooled_output=pooled[order])
    report = cmp(d, tmp_path / "sorted.npz", reference=d / "truth", floor_from=d / "f32", precision="float32")
    assert not report.passed
    assert any(p.startswith("the candidate looks misaligned") for p in report.problems), report.format_table()
    # The same rows in record order pass: the diagnosis is about the order, not the values.
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    np.savez(tmp_path / "sorted_with_index.npz", sequence_output=seq[order], pooled_output=pooled[order],
             record_index=np.concatenate([p["record_index"] for p in parts])[order])
    assert cmp(d, tmp_path / "sorted_with_index.npz", reference=d / "truth", floor_from=d / "f32",
               precision="float32").passed


# -- dataset compare = single-batch compare -----------------------------------------------------


def same_checks(a: Any, b: Any) -> None:
    """Two entries' verdicts are the same numbers, bit for bit."""
    assert [k.statistic for k in a.checks] == [k.statistic for k in b.checks] and a.checks
    for x, y in zip(a.checks, b.checks, strict=True):
        assert (x.value, x.members, x.reference, x.limit) == (y.value, y.members, y.reference, y.limit)
    assert a.power == b.power and a.passed == b.passed and a.floor_scale == b.floor_scale


def test_the_floor_read_from_a_run_gives_the_verdict_computed_on_the_fly(runs, monkeypatch):
    from bert_ref.oracle.ensemble import members
    from bert_ref.scale import shards

    d = runs
    on_the_fly = cmp(d, d / "f16", precision="float16")
    truth_only = cmp(d, d / "f16", reference=d / "truth", precision="float16")
    floor_only = cmp(d, d / "f16", reference=d / "truth", floor_from=d / "f16", precision="float16")

    def no_model(job):
        raise AssertionError("a compare with the whole ensemble on disk runs no model")

    with monkeypatch.context() as mp:
        mp.setattr(shards, "worker_model", no_model)
        stored = cmp(d, d / "f16", reference=d / "truth", floor_from=d / "f16e", precision="float16")
    for r in (on_the_fly, truth_only, floor_only, stored):
        assert r.passed and r.report.precision == "float16" and r.report.floor_ratio_limit == 4.0
    # A floor run without its ensemble: the members it lacks are computed, and the report says so.
    others = ", ".join(m.name for m in members("float16")[1:])  # float16~fused, float16~wide, ...
    assert any(f"holds float16; the ensemble's {others} computed on the fly" in n
               for n in floor_only.report.notes), floor_only.report.notes
    assert not any("on the fly" in n for n in stored.report.notes)
    for a, b, c, e in zip(on_the_fly.report, floor_only.report, truth_only.report, stored.report, strict=True):
        # The truth read or computed: the same verdict, ensemble included (computed on the fly, by a
        # model loaded in float64 or in float16: the same runs but for the order of a few sums).
        assert a.floor_scale == c.floor_scale and [k.statistic for k in a.checks] == [k.statistic for k in c.checks]
        for x, y in zip(a.checks, c.checks, strict=True):
            assert x.value == y.value and x.members == pytest.approx(y.members, rel=1e-12) and x.passed == y.passed
        assert a.valid.max_abs_error == b.valid.max_abs_error == c.valid.max_abs_error == e.valid.max_abs_error
        assert {k.statistic for k in a.checks} >= {"max_abs", "rms", "mean_cos", "worst_cos"}
        assert len(a.check("rms").members) == 5  # float16; its fused, wide, split-K and float16-accumulation variants
        # The ensemble read from `run --ensemble`, partly read, or computed by the same float16 model: the
        # same bits, so the same verdict to the last digit, detection power included.
        same_checks(b, c)
        same_checks(e, c)
        assert a.power is not None and e.power is not None


def test_a_half_precision_candidate_is_judged_against_the_truth_without_flags(runs):
    r = cmp(runs, runs / "f16")  # detected from the dtypes, as the single-batch compare does
    assert r.report.precision == "float16" and r.report.floor_ratio_limit == 4.0 and r.passed
    assert any("precision float16, from the candidate's dtypes" in n for n in r.report.notes)


def one_batch(d: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The dataset's records in the one batch of `batch_tokens=10_000` (their order) and its inputs."""
    from bert_ref.scale.dataset import length_batches, open_dataset, pad_batch

    ds = open_dataset(d / "data.jsonl")
    records = ds.read(0, ds.num_records, vocabulary_size=len(VOCAB), num_segments=2, max_length=MAX_LEN,
                      tokenizer=lambda: BertTokenizer.from_preset(d / "tiny"))
    (rows,) = length_batches(records.lengths, 10_000)
    return records.index[rows], pad_batch(records, rows)


STAT_FIELDS = ("count", "max_abs_error", "max_rel_error", "max_ulp_error", "rms_error", "tolerance_ratio",
               "worst_reference", "worst_candidate", "nonfinite", "worst_error", "rel_error_over_cut",
               "magnitude_cut", "min_cosine")


@pytest.mark.parametrize("precision", ["float32", "float16", "int8"])
def test_one_batch_gives_the_single_batch_compare_exactly(runs, tmp_path, precision):
    # All records in one shard and one batch: the dataset compare is compare_to_truth on that batch,
    # every number to the last bit: the statistics, the ensemble's checks, the detection power, the
    # int8 recipe detected and its check.
    from bert_ref.model.precision import PRECISIONS
    from bert_ref.oracle.run import compare_to_truth, oracle_outputs

    d = runs
    order, inputs = one_batch(d)
    model = BertBackbone.from_preset(d / "tiny", dtype="float64")
    keys = ["sequence_output", "pooled_output"] + [f"hidden_states.{i}" for i in range(3)]
    ours = oracle_outputs(model, inputs, keys, dtype=PRECISIONS[precision].policy)
    store = np.float16 if precision == "float16" else np.float32
    rng = np.random.default_rng(1)  # a port that rounds a little differently from ours (int8: the same recipe)
    noise = 1e-6 if precision == "int8" else 2e-3
    cand = {k: (np.asarray(v, np.float64) * (1 + noise * rng.standard_normal(np.shape(v)))).astype(store)
            for k, v in ours.items()}
    stacked = np.stack([cand[f"hidden_states.{i}"] for i in range(3)])
    np.savez(tmp_path / "c.npz", record_index=order, sequence_output=cand["sequence_output"],
             pooled_output=cand["pooled_output"], hidden_states=stacked)
    report = cmp(d, tmp_path / "c.npz", precision=precision, shard_size=64, batch_tokens=10_000)
    single = compare_to_truth(model, inputs, cand, precision=precision)
    for key in keys:
        a, b = report.entries[key], single[key]
        for field in STAT_FIELDS:
            assert getattr(a.valid, field) == getattr(b.valid, field), (key, field)
            assert getattr(a.floor, field) == getattr(b.floor, field), (key, "floor", field)
        assert a.valid.worst_index == (int(order[b.valid.worst_index[0]]), *b.valid.worst_index[1:])
        assert (a.floor_ratio, a.rms_floor_ratio, a.atol) == (b.floor_ratio, b.rms_floor_ratio, b.atol)
        same_checks(a, b)
        assert a.power is not None
        if precision == "int8" and key in ("hidden_states.0", "hidden_states.1"):
            assert "recipe" in [k.statistic for k in a.checks]
    assert report.passed == single.passed
    if precision == "int8":
        (detected,) = [n for n in single.notes if n.startswith("int8 scheme")]
        assert any(n.startswith(detected + "; detected on the 30 record(s) of shard 0's largest batch")
                   for n in report.report.notes), report.report.notes


def padded_candidate(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A candidate directory of port_loop's: record -> (last_hidden_state rows [W, H], pooled [H])."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        s = load_file(str(f))
        for j, r in enumerate(s["record_index"]):
            out[int(r)] = (s["last_hidden_state"][j], s["pooler_output"][j])
    return out


def test_the_relative_error_frontier_answers_every_cut_as_the_elements_do():
    # rel_frontier keeps few elements, yet the largest relative error over |r| >= t is the same as
    # over every element, for any t, and after merging frontiers of parts.
    from bert_ref.scale.compare import _frontier, rel_frontier, rel_over_cut

    rng = np.random.default_rng(3)
    for trial in range(20):
        mag = np.abs(rng.standard_normal(5000)) * 10.0 ** rng.uniform(-3, 3)
        mag[rng.integers(0, 5000, 50)] = mag[0]  # ties
        rel = np.abs(rng.standard_normal(5000)) / (mag if trial % 2 else 1.0)  # errors of fixed or relative size
        parts = np.array_split(np.arange(5000), 7)
        fronts = [rel_frontier(mag[p], rel[p]) for p in parts]
        merged = _frontier(np.concatenate([f[0] for f in fronts]), np.concatenate([f[1] for f in fronts]))
        whole = rel_frontier(mag, rel)
        assert merged[0].size < 200
        for t in [0.0, *np.quantile(mag, [0.0, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0]), mag.max() * 2]:
            sel = mag >= t if t > 0 else mag > 0
            want = float(rel[sel].max()) if sel.any() else 0.0
            assert rel_over_cut(merged, t) == want == rel_over_cut(whole, t)


def test_rel_over_cut_and_the_detection_power_are_exact_over_the_dataset(runs):
    # Several shards and batches: the magnitude cut is the dataset's (10% of the RMS value of every
    # valid truth element), the worst relative error is over every element above it, and the
    # detection power is that of the statistics over every record, as one batch of all records.
    from test_scale import shards as read_shards

    from bert_ref.oracle import verdict

    d = runs
    report = cmp(d, d / "port_ok", reference=d / "truth", floor_from=d / "f32", precision="float32")
    truth = read_shards(d / "truth")
    lengths = np.concatenate([s["length"] for s in truth.values()])
    t_seq = np.concatenate([s["sequence_output"][j, :n] for s in truth.values()
                            for j, n in enumerate(s["length"])])  # [T, H] every valid position
    cand = padded_candidate(d / "port_ok")
    c_seq = np.concatenate([cand[r][0][:n].astype(np.float64) for r, n in enumerate(lengths)])
    t_pool = np.concatenate([s["pooled_output"] for s in truth.values()])
    c_pool = np.stack([cand[r][1].astype(np.float64) for r in range(len(lengths))])
    for key, t, c in (("sequence_output", t_seq, c_seq), ("pooled_output", t_pool, c_pool)):
        e = report.entries[key]
        cut = 0.1 * np.sqrt(np.mean(t * t))
        big = np.abs(t) >= cut
        want = float(np.max(np.abs(c - t)[big] / np.abs(t)[big]))
        assert e.valid.magnitude_cut == pytest.approx(cut, rel=1e-12)  # the same sum, in another order
        assert e.valid.rel_error_over_cut == want, key
        floor = {k.statistic: k.members[0] for k in e.checks}  # the floor's own statistics
        power = verdict.power(t, floor, e.checks)
        assert e.power.shift == pytest.approx(power.shift, rel=1e-12)
        assert e.power.scatter == pytest.approx(power.scatter, rel=1e-12)
    # The per-batch maximum, each batch with its own cut, is not what is reported: the batches' cuts differ.
    batches = [b for s in truth.values() for b in np.unique(s["batch"])]
    assert len(batches) > len(truth) > 1


def planted(d: Path, tmp: Path, changes: dict[tuple[int, int, int], float]) -> Path:
    """Our float64 truth as a candidate file (float64, record order) with errors added at
    (record, position, channel) of sequence_output."""
    from test_scale import shards as read_shards  # the truth's shards, padded back to [n, L, H]

    s = read_shards(d / "truth")
    seq = np.concatenate([np.pad(x["sequence_output"], [(0, 0), (0, MAX_LEN - x["sequence_output"].shape[1]),
                                                        (0, 0)]) for x in s.values()])
    pooled = np.concatenate([x["pooled_output"] for x in s.values()])
    for (r, p, c), delta in changes.items():
        seq[r, p, c] += delta
    np.savez(tmp / "planted.npz", sequence_output=seq, pooled_output=pooled)
    return tmp / "planted.npz"


def test_the_fail_sentence_describes_the_element_with_the_largest_error(runs, tmp_path):
    d = runs
    cand = planted(d, tmp_path, {(3, 1, 7): 2e-4, (20, 2, 4): 5e-4, (11, 0, 9): -1e-4})
    report = cmp(d, cand, reference=d / "truth", floor_from=d / "f32", precision="float32")
    e = report.entries["sequence_output"]
    assert not report.passed and e.valid.worst_index == (20, 2, 4)
    truth = read_shard(d / "truth" / "shard-00002.safetensors").record("sequence_output", 4)[2, 4]
    text = report.format_table()
    sentence = next(line for line in text.splitlines() if line.startswith("First over tolerance"))
    assert "at record 20, position 2, channel 4 the reference is " + format(truth, ".7g") in sentence
    assert "and the candidate " + format(truth + 5e-4, ".7g") in sentence
    assert f"error {e.valid.max_abs_error:.3e} (the output's largest)" in sentence
    assert "(record 20 is data.jsonl:21)" in text


def test_worst_records_are_ranked_by_what_is_printed(runs, tmp_path):
    d = runs
    cand = planted(d, tmp_path, {(3, 1, 7): 2e-4, (20, 2, 4): 5e-4, (11, 0, 9): -1e-4})
    report = cmp(d, cand, reference=d / "truth", floor_from=d / "f32", precision="float32")
    worst = report.worst["sequence_output"]
    assert [w["record"] for w in worst[:3]] == [20, 3, 11]
    assert [w["max_abs"] for w in worst] == sorted((w["max_abs"] for w in worst), reverse=True)
    assert "(ranked by max abs error)" in report.format_table()
    # Against tolerances the ranking is by error / tolerance, and that is what is printed.
    report = cmp(d, cand, reference=d / "truth", atol="1e-6", rtol="0.5")
    worst = report.worst["sequence_output"]
    assert [w["ratio"] for w in worst] == sorted((w["ratio"] for w in worst), reverse=True)
    assert "(ranked by error / tolerance)" in report.format_table() and "x tol" in report.format_table()


def test_per_output_tolerances_apply_to_their_output(runs, tmp_path):
    d = runs
    cand = planted(d, tmp_path, {(5, 1, 1): 1e-3})
    loose = cmp(d, cand, reference=d / "truth", atol="1e-6,sequence_output=1e-2", rtol="0")
    assert loose.passed and loose.entries["sequence_output"].atol == 1e-2
    tight = cmp(d, cand, reference=d / "truth", atol="1e-2,sequence_output=1e-6", rtol="0")
    assert not tight.passed and tight.first_failure == "sequence_output"
    assert tight.entries["pooled_output"].passed


def test_records_compares_the_range_and_says_so(runs, tmp_path):
    d = runs
    cand = planted(d, tmp_path, {(20, 2, 4): 5e-4})
    report = cmp(d, cand, reference=d / "truth", floor_from=d / "f32", precision="float32", records="0:16")
    assert report.passed and report.compared == 16
    assert "compared 16 of the dataset's 30 records (--records 0:16)" in report.format_table()
    assert report.entries["sequence_output"].shape[0] == 16
    # Computed on the fly, a subset of each batch's records gets the bits of the full batch's run.
    fly = cmp(d, cand, precision="float32", records="3:13")
    disk = cmp(d, cand, reference=d / "truth", floor_from=d / "f32", precision="float32", records="3:13")
    for a, b in zip(fly.report, disk.report, strict=True):
        assert a.valid.max_abs_error == b.valid.max_abs_error and a.floor_scale == b.floor_scale
        assert a.valid.worst_index == b.valid.worst_index and a.valid.count == b.valid.count


def test_the_command_prints_sources_and_writes_junit_with_the_worst_records(runs, tmp_path):
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    d = runs
    cand = planted(d, tmp_path, {(20, 2, 4): 5e-4})
    r = subprocess.run([sys.executable, "-m", "bert_ref", "compare", str(d / "tiny"), "--dataset",
                        str(d / "data.jsonl"), "--candidate", str(cand), "--reference", str(d / "truth"),
                        "--floor-from", str(d / "f32"), "--precision", "float32", "--junit", str(tmp_path / "j.xml"),
                        "--worst", "2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "record 20 (data.jsonl:21)" in r.stdout and "(record 20 is data.jsonl:21)" in r.stdout
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    cases = {c.get("name"): c.find("failure") is not None for c in suite.findall("testcase")}
    assert cases["sequence_output"] and not cases["pooled_output"]  # one case per output
    assert cases["sequence_output record 20 (data.jsonl:21)"]  # then the worst records
    assert int(suite.get("tests")) == 2 + 2 * 2 and int(suite.get("failures")) == 2


# -- the acceptance on real weights --------------------------------------------------------


def test_minilm_nightly_job_passes_a_correct_half_port_and_fails_a_tanh_gelu_and_a_misaligned_one(minilm_dir,
                                                                                                 tmp_path, capsys):
    """all-MiniLM-L6-v2 converted to float64 (the README's recipe), 24 records of real text packed,
    the float64 truth run; then three candidates through the porter's loop: our
    float16 (a correct half-precision port: at its floor by definition), a float32 port with the
    tanh GELU (its error is far over the float32 floor on these weights), and the correct float32
    port's rows sorted by length without record_index."""
    from bert_ref.cli import main

    corpus = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "golden" / "tokenizer" /
                                            "corpus.jsonl").read_text("utf-8").splitlines()][:16]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    assert main(["convert", str(minilm_dir), str(tmp_path / "m64"), "--dtype", "float64"]) == 0
    common = ["--dataset", str(data), "--shard-size", "8", "--scheduler", "synchronous", "--no-progress"]
    assert main(["pack", str(tmp_path / "m64"), "--out", str(tmp_path / "packed"), *common]) == 0
    assert main(["run", str(tmp_path / "m64"), "--out", str(tmp_path / "truth"), "--dtype", "float64", *common]) == 0
    capsys.readouterr()

    def compare(candidate: Path, precision: str) -> tuple[int, str]:
        status = main(["compare", str(tmp_path / "m64"), "--candidate", str(candidate), "--reference",
                       str(tmp_path / "truth"), "--precision", precision, *common])
        return status, capsys.readouterr().out

    half = port_loop(tmp_path / "packed", tmp_path / "half", tmp_path / "m64", dtype="float16")
    status, out = compare(half, "float16")
    assert status == 0, out
    tanh = port_loop(tmp_path / "packed", tmp_path / "tanh", tmp_path / "m64", activation="gelu_approximate")
    status, out = compare(tanh, "float32")
    assert status == 1 and "First over tolerance: sequence_output" in out and "misaligned" not in out, out
    ok = port_loop(tmp_path / "packed", tmp_path / "ok", tmp_path / "m64")
    parts = [load_file(str(f)) for f in sorted(ok.glob("*.safetensors"))]
    width = max(p["last_hidden_state"].shape[1] for p in parts)
    seq = np.concatenate([np.pad(p["last_hidden_state"], [(0, 0), (0, width - p["last_hidden_state"].shape[1]),
                                                          (0, 0)]) for p in parts])
    order = np.argsort(np.concatenate([p["attention_mask"].sum(1) for p in parts]), kind="stable")
    np.savez(tmp_path / "sorted.npz", last_hidden_state=seq[order])
    status, out = compare(tmp_path / "sorted.npz", "float32")
    assert status == 1 and "FAIL: the candidate looks misaligned" in out, out


def test_run_ensemble_stores_each_member_and_is_part_of_the_job(runs, tmp_path):
    from bert_ref.model.precision import get_policy
    from bert_ref.oracle.ensemble import members
    from bert_ref.oracle.run import oracle_outputs

    d = runs
    m = json.loads((d / "f16e" / MANIFEST).read_text())
    assert m["job"]["ensemble"] == [x.name for x in members("float16")[1:]]
    assert m["job"]["ensemble"][:2] == ["float16~fused", "float16~wide"]
    shard = read_shard(d / "f16e" / m["shards"][0]["file"])
    plain = read_shard(d / "f16" / m["shards"][0]["file"])
    np.testing.assert_array_equal(shard.arrays["sequence_output"], plain.arrays["sequence_output"])
    # Each member's outputs are its run of each batch: here the first batch, recomputed.
    rows = np.flatnonzero(shard.arrays["batch"] == 0)
    width = int(shard.lengths[rows].max())
    inputs = {k: shard.arrays[k][rows, :width] for k in INPUT_KEYS}
    model = BertBackbone.from_preset(d / "tiny", dtype="float16")
    for member in members("float16")[1:]:
        want = oracle_outputs(model, inputs, ["sequence_output", "pooled_output"], dtype=member.policy)
        got = shard.padded(f"sequence_output@{member.name}", rows, width)
        np.testing.assert_array_equal(got * inputs["padding_mask"][..., None],
                                      want["sequence_output"] * inputs["padding_mask"][..., None])
        np.testing.assert_array_equal(shard.arrays[f"pooled_output@{member.name}"][rows], want["pooled_output"])
        assert got.dtype == get_policy("float16").compute_dtype
    # The ensemble is part of the job: a run without it does not resume into this directory.
    shutil.copytree(d / "f16e", tmp_path / "f16e")
    with pytest.raises(ValueError, match="ensemble"):
        run_dataset(str(d / "tiny"), d / "data.jsonl", tmp_path / "f16e", dtype="float16", shard_size=8,
                    batch_tokens=40, scheduler="synchronous", progress=False)
    with pytest.raises(ValueError, match="--ensemble: the float64 policy has no ensemble"):
        run(d, tmp_path / "f64", ensemble=True)
