"""Dataset-scale runs (`bert_ref.scale`, `bert_ref.scale.dataset`): shards, manifest, resume, faults, engines.

A tiny random-weight preset (float64 weights, so workers map them) and datasets of a few dozen
records keep this module fast. The Dask cluster is a `distributed.LocalCluster` of 2 worker
processes on loopback, started here and shut down at the end of the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from needs import need

need("dask", 'pip install "bert-ref[scale]"')
distributed = need("distributed", 'pip install "bert-ref[scale]"')

from safetensors.numpy import load_file  # noqa: E402

from bert_ref import BertBackbone  # noqa: E402
from bert_ref.scale.compare import compare_dataset  # noqa: E402
from bert_ref.scale.dataset import DatasetError, length_batches, open_dataset  # noqa: E402
from bert_ref.scale.run import LOCK, run_dataset  # noqa: E402
from bert_ref.scale.shards import MANIFEST, ragged, read_shard, verify_shard  # noqa: E402
from bert_ref.text.tokenizer import BertTokenizer  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "the", "cat", "sat", "on", "mat", "##s", "dog", "a"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "a", "cats", "xyz"]
MAX_LEN = 24
# The same record computed alone at full padded length and inside a length-sorted batch differs
# only by the summation order of BLAS over a different number of (zero-weighted) padded keys:
# float64 rounding, measured 4.2e-17; 1e-12 leaves room for other BLAS builds.
BATCHING_ATOL = 1e-12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    model = BertBackbone(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=MAX_LEN, seed=0, dtype="float64")
    model.preset_metadata = {"vocabulary": VOCAB, "lowercase": True}
    model.save_to_preset(d / "tiny")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        rec = {"text": " ".join(rng.choice(WORDS, int(rng.integers(1, 9))))}
        if i % 3 == 0:
            rec["text_pair"] = " ".join(rng.choice(WORDS, 3))
        lines.append(json.dumps(rec))
    lines.insert(5, "")  # blank lines are not records: record 5 is on line 7
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=50) as c:
        yield c


def texts(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "data.jsonl").read_text().splitlines() if line.strip()]


def shards(out: Path) -> dict[int, dict[str, np.ndarray]]:
    """Each shard's arrays, the ragged outputs padded back to [n, L, H] with zeros."""
    m = json.loads((out / MANIFEST).read_text())
    result = {}
    for e in m["shards"]:
        shard = read_shard(out / e["file"])
        arrays = load_file(str(out / e["file"]))
        for k in arrays:
            if ragged(k):
                arrays[k] = shard.padded(k, np.arange(len(shard.index)))
        result[e["shard"]] = arrays
    return result


def check_against_single_forward(d: Path, out: Path) -> None:
    """Every record of every shard equals a forward of that record alone, padded to MAX_LEN."""
    model = BertBackbone.from_preset(d / "tiny", dtype="float64")
    tok = BertTokenizer.from_preset(d / "tiny")
    recs = texts(d)
    seen = []
    for s in shards(out).values():
        for j, r in enumerate(s["record_index"]):
            rec = recs[r]
            inputs = tok([rec["text"]], [rec["text_pair"]] if "text_pair" in rec else None, sequence_length=MAX_LEN)
            want = model(inputs)
            n = int(s["length"][j])
            assert n == inputs["padding_mask"].sum()
            np.testing.assert_allclose(s["sequence_output"][j, :n], want["sequence_output"][0, :n], rtol=0,
                                       atol=BATCHING_ATOL)
            np.testing.assert_allclose(s["pooled_output"][j], want["pooled_output"][0], rtol=0, atol=BATCHING_ATOL)
            assert not s["sequence_output"][j, n:].any()  # not computed: zero
            seen.append(int(r))
    assert seen == list(range(len(recs)))  # every record once, in order


# -- the dataset -------------------------------------------------------------------------------


def test_length_batches_sort_and_respect_the_token_budget():
    lengths = [5, 2, 9, 3, 3, 7]
    batches = length_batches(lengths, batch_tokens=10)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 10
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_blank_lines_are_skipped_and_sources_name_the_line(data):
    ds = open_dataset(data / "data.jsonl")
    assert ds.num_records == 40
    tok = BertTokenizer.from_preset(data / "tiny")
    recs = ds.part(4, 7).read(4, 7, vocabulary_size=len(VOCAB), num_segments=2, max_length=MAX_LEN,
                              tokenizer=lambda: tok)
    assert recs.index.tolist() == [4, 5, 6]
    assert recs.sources == ["data.jsonl:5", "data.jsonl:7", "data.jsonl:8"]


# -- run, resume, faults (the local schedulers) ----------------------------------------------------


def test_run_writes_shards_equal_to_single_record_forwards(data, tmp_path):
    out = tmp_path / "run"
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16,
                    scheduler="synchronous", progress=False)
    assert m["complete"] and [e["records"] for e in m["shards"]] == [[0, 16], [16, 32], [32, 40]]
    import hashlib

    import bert_ref

    assert m["job"]["policy"] == "float64" and m["bert_ref_version"] == bert_ref.__version__
    assert m["job"]["weights_sha256"] == hashlib.sha256((data / "tiny" / "model.safetensors").read_bytes()).hexdigest()
    assert m["job"]["dataset_sha256"] and m["job"]["num_records"] == 40 and m["job"]["shard_size"] == 16
    for e in m["shards"]:
        assert e["sha256"] == hashlib.sha256((out / e["file"]).read_bytes()).hexdigest()
        assert {"load_s", "read_s", "compute_s", "commit_s", "task_s"} <= set(e["timings"])
    assert all(verify_shard(out, e) is None for e in m["shards"])
    # No temporary files: the shards, the manifest and the run directory's lock file.
    assert sorted(p.name for p in out.iterdir()) == [LOCK, MANIFEST] + [e["file"] for e in m["shards"]]
    check_against_single_forward(data, out)


def test_a_run_removes_only_the_temporary_files_of_its_own_shards(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = {"thesis.tmp-backup": "my thesis", "notes.tmp-1-2": "mine too", ".shard-00001.safetensors.bak": "kept"}
    for name, text in mine.items():
        (out / name).write_text(text)
    killed = out / ".shard-00001.safetensors.abcd_123.tmp"  # what a worker killed mid-shard leaves
    killed.write_bytes(b"half a shard")
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16,
                    scheduler="synchronous", progress=False)
    assert m["complete"] and not killed.exists()
    assert all((out / name).read_text() == text for name, text in mine.items())


def test_rerun_of_a_finished_job_computes_nothing(data, tmp_path):
    out = tmp_path / "run"
    run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16, scheduler="synchronous",
                progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    log = []
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16,
                    scheduler="synchronous", progress=False, log=log.append)
    assert m["timings"]["shards_computed"] == 0 and m["timings"]["shards_skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before
    assert "3 of 3 shards verified by sha256 and skipped, 0 to compute" in log[0]


def test_corrupt_and_truncated_shards_are_detected_and_recomputed(data, tmp_path):
    out = tmp_path / "run"
    first = run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16,
                        scheduler="synchronous", progress=False)
    truncated, corrupt = out / first["shards"][0]["file"], out / first["shards"][2]["file"]
    truncated.write_bytes(truncated.read_bytes()[:-64])
    flipped = bytearray(corrupt.read_bytes())
    flipped[-3] ^= 0x10  # one bit of the last value: same size, different sha256
    corrupt.write_bytes(bytes(flipped))
    log = []
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16,
                    scheduler="synchronous", progress=False, log=log.append)
    assert m["timings"]["shards_computed"] == 2 and m["timings"]["shards_skipped"] == 1
    assert any("shard 0" in line and "truncated" in line for line in log)
    assert any("shard 2" in line and "corrupt" in line for line in log)
    assert [e["sha256"] for e in m["shards"]] == [e["sha256"] for e in first["shards"]]


def test_a_different_job_in_the_same_directory_is_refused(data, tmp_path):
    out = tmp_path / "run"
    run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=16, scheduler="synchronous",
                progress=False)
    with pytest.raises(ValueError, match="its shard_size is 16, this run's is 8"):
        run_dataset(str(data / "tiny"), data / "data.jsonl", out, dtype="float64", shard_size=8,
                    scheduler="synchronous", progress=False)


def test_too_long_text_record_names_its_index_and_line(data, tmp_path):
    with pytest.raises(DatasetError, match=r"record \d+ \(data\.jsonl:\d+\): \d+ tokens after packing; the longest "
                                           r"record allowed is 6 .*--truncate"):
        run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "run", sequence_length=6,
                    scheduler="synchronous", progress=False)
    # With --truncate the same records are cut to 6 tokens.
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "cut", sequence_length=6, truncate=True,
                    scheduler="synchronous", progress=False)
    assert max(int(s["length"].max()) for s in shards(tmp_path / "cut").values()) == 6 and m["complete"]


def token_id_files(d: Path) -> Path:
    """Two .npz files of right-padded token ids (a dataset directory)."""
    rng = np.random.default_rng(1)
    root = d / "ids"
    root.mkdir(exist_ok=True)
    for k, n in enumerate((7, 5)):
        lengths = rng.integers(2, 12, n)
        ids = np.zeros((n, 12), np.int32)
        mask = np.zeros((n, 12), np.int32)
        for i, m in enumerate(lengths):
            ids[i, :m] = rng.integers(5, len(VOCAB), m)
            mask[i, :m] = 1
        np.savez(root / f"part-{k}.npz", token_ids=ids, padding_mask=mask)
    return root


def test_token_id_shards_run_in_record_order(data, tmp_path):
    root = token_id_files(tmp_path)
    out = tmp_path / "run"
    run_dataset(str(data / "tiny"), root, out, dtype="float64", shard_size=4,
                outputs=["sequence_output", "hidden_states"],
                scheduler="synchronous", progress=False)
    model = BertBackbone.from_preset(data / "tiny", dtype="float64")
    inputs = [dict(np.load(p)) for p in sorted(root.glob("*.npz"))]
    ids = np.concatenate([x["token_ids"] for x in inputs])
    mask = np.concatenate([x["padding_mask"] for x in inputs])
    want = model({"token_ids": ids, "padding_mask": mask}, output_hidden_states=True)
    got = {k: np.concatenate([s[k] for s in shards(out).values()]) for k in ("record_index", "length")}
    assert got["record_index"].tolist() == list(range(12)) and (got["length"] == mask.sum(1)).all()
    for s in shards(out).values():
        assert "pooled_output" not in s and "hidden_states.2" in s
        for j, r in enumerate(s["record_index"]):
            n = int(s["length"][j])
            np.testing.assert_allclose(s["sequence_output"][j, :n], want["sequence_output"][r, :n], rtol=0,
                                       atol=BATCHING_ATOL)
            np.testing.assert_allclose(s["hidden_states.1"][j, :n], want["hidden_states"][1][r, :n], rtol=0,
                                       atol=BATCHING_ATOL)


def test_out_of_vocabulary_id_names_the_record_file_and_row(data, tmp_path):
    root = token_id_files(tmp_path)
    part = dict(np.load(root / "part-1.npz"))
    part["token_ids"][3, 1] = len(VOCAB)
    np.savez(root / "part-1.npz", **part)
    with pytest.raises(DatasetError, match=rf"record 10 \(part-1\.npz row 3\): token_ids\[1\] = {len(VOCAB)} is "
                                           rf"outside \[0, {len(VOCAB)}\)"):
        run_dataset(str(data / "tiny"), root, tmp_path / "run", shard_size=4, scheduler="synchronous", progress=False)


def test_left_padded_token_ids_are_refused(data, tmp_path):
    np.savez(tmp_path / "left.npz", token_ids=np.array([[5, 6, 7], [0, 6, 7]]),
             padding_mask=np.array([[1, 1, 1], [0, 1, 1]]))
    with pytest.raises(DatasetError, match=r"record 1 \(left\.npz row 1\): padding_mask is not right-padded"):
        run_dataset(str(data / "tiny"), tmp_path / "left.npz", tmp_path / "run", scheduler="synchronous",
                    progress=False)


def test_parquet_text_column_reads_like_jsonl(data, tmp_path):
    pa = need("pyarrow", 'pip install "bert-ref[parquet]"')
    import pyarrow.parquet as pq

    recs = texts(data)[:10]
    pq.write_table(pa.table({"text": [r["text"] for r in recs],
                             "text_pair": [r.get("text_pair") for r in recs]}), tmp_path / "d.parquet")
    run_dataset(str(data / "tiny"), tmp_path / "d.parquet", tmp_path / "pq", dtype="float64", shard_size=4,
                scheduler="synchronous", progress=False)
    run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "js", dtype="float64", shard_size=4,
                scheduler="synchronous", progress=False)
    a, b = shards(tmp_path / "pq"), shards(tmp_path / "js")
    assert sorted(a) == [0, 1, 2] and a[2]["record_index"].tolist() == [8, 9]
    for k in (0, 1):  # the same records in the same shards: the same bytes
        for key in a[k]:
            np.testing.assert_array_equal(a[k][key], b[k][key])


# -- compare ----------------------------------------------------------------------------------------


def test_compare_finds_the_perturbed_record(data, tmp_path):
    truth = tmp_path / "truth"
    run_dataset(str(data / "tiny"), data / "data.jsonl", truth, dtype="float64", shard_size=16,
                scheduler="synchronous", progress=False)
    # A candidate in its own layout: two files without record_index, consecutive records, float32.
    s = shards(truth)
    seq = np.concatenate([np.pad(x["sequence_output"], [(0, 0), (0, MAX_LEN - x["sequence_output"].shape[1]), (0, 0)])
                          for x in s.values()]).astype(np.float32)
    pooled = np.concatenate([x["pooled_output"] for x in s.values()]).astype(np.float32)
    seq[23, 2, 5] += 1e-3
    cand = tmp_path / "cand"
    cand.mkdir()
    np.savez(cand / "a.npz", sequence_output=seq[:30], pooled_output=pooled[:30])
    np.savez(cand / "b.npz", sequence_output=seq[30:], pooled_output=pooled[30:])
    for reference in (truth, None):  # read from the run, and computed on the fly
        report = compare_dataset(str(data / "tiny"), data / "data.jsonl", cand, reference=reference, dtype="float64",
                                 shard_size=16, scheduler="synchronous", progress=False)
        assert not report.passed and report.first_failure == "sequence_output"
        e = report.entries["sequence_output"]
        assert report.worst["sequence_output"][0]["record"] == 23 and e.valid.worst_index == (23, 2, 5)
        assert e.valid.max_abs_error == pytest.approx(1e-3, rel=1e-3)
        assert report.entries["pooled_output"].passed
        assert "record 23, position 2, channel 5" in report.format_table()
        assert report.worst["sequence_output"][0]["source"] == "data.jsonl:25"


def test_compare_refuses_a_reference_with_a_corrupt_shard(data, tmp_path):
    truth = tmp_path / "truth"
    run_dataset(str(data / "tiny"), data / "data.jsonl", truth, dtype="float64", shard_size=16,
                scheduler="synchronous", progress=False)
    cand = tmp_path / "cand"
    shutil.copytree(truth, cand)
    (cand / MANIFEST).unlink()
    victim = truth / "shard-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(DatasetError, match="reference shard 1 .*truncated or corrupt.*rerun `bert-ref run`"):
        compare_dataset(str(data / "tiny"), data / "data.jsonl", cand, reference=truth, scheduler="synchronous",
                        progress=False)


def test_compare_of_a_partial_candidate_judges_its_records_and_says_so(data, tmp_path):
    np.savez(tmp_path / "part.npz", pooled_output=np.zeros((30, 16)), record_index=np.arange(30))
    report = compare_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "part.npz", scheduler="synchronous",
                             progress=False)
    assert report.compared == 30 and not report.passed
    assert "compared 30 of the dataset's 40 records (the candidate holds 30)" in report.format_table()


def test_local_thread_workers_give_the_synchronous_bytes(data, tmp_path):
    a = run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "a", dtype="float64", shard_size=8,
                    scheduler="synchronous", progress=False)
    b = run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "b", dtype="float64", shard_size=8,
                    scheduler="local", workers=2, progress=False)
    assert b["settings"]["workers"] == 2 and b["settings"]["threads_per_worker"] == 1
    # Each element is computed the same way whatever the threads: bit-identical shards.
    assert [e["sha256"] for e in b["shards"]] == [e["sha256"] for e in a["shards"]]


# -- Dask distributed: a 2-worker local cluster -----------------------------------------------------


def test_cluster_run_equals_the_synchronous_run(data, tmp_path, cluster):
    run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "sync", dtype="float64", shard_size=8,
                scheduler="synchronous", progress=False)
    m = run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "dist", dtype="float64", shard_size=8,
                    scheduler=cluster.scheduler_address, progress=False)
    assert m["complete"] and m["settings"]["scheduler"] == "distributed"
    assert len({e["worker"] for e in m["shards"]}) >= 1
    a, b = shards(tmp_path / "sync"), shards(tmp_path / "dist")
    for k in a:
        for key in a[k]:
            np.testing.assert_allclose(b[k][key], a[k][key], rtol=0, atol=BATCHING_ATOL)


def test_worker_killed_mid_shard_the_job_completes_with_the_shard_recomputed(data, tmp_path, cluster):
    marker = tmp_path / "killed"

    def install_fault(marker=str(marker)):
        """In each worker: the first shard (across workers) writes its header and dies, as a machine
        that goes down mid-shard."""
        import os as _os

        import bert_ref.scale.shards as scale

        real = scale._pwrite

        def dying_pwrite(fd, data, offset):
            real(fd, data, offset)
            try:
                m = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
            except FileExistsError:
                return
            try:
                name = _os.path.basename(_os.readlink(f"/proc/self/fd/{fd}"))  # Linux
            except OSError:
                name = "shard-?"
            _os.write(m, name.encode())
            _os.close(m)
            _os._exit(1)

        scale._pwrite = dying_pwrite

    client = distributed.Client(cluster.scheduler_address)
    try:
        client.run(install_fault)
        m = run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "run", dtype="float64", shard_size=8,
                        scheduler=cluster.scheduler_address, progress=False)
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the dead one
    finally:
        client.close()
    killed = marker.read_text()
    assert killed.startswith(".shard-")  # the fault did fire (in the temporary file of a shard)
    assert m["complete"] and all(verify_shard(tmp_path / "run", e) is None for e in m["shards"])
    assert not list((tmp_path / "run").glob(".shard-*.tmp"))
    check_against_single_forward(data, tmp_path / "run")


def test_invalid_record_on_a_cluster_names_the_record(data, tmp_path, cluster):
    with pytest.raises(DatasetError, match=r"record \d+ \(data\.jsonl:\d+\): \d+ tokens after packing"):
        run_dataset(str(data / "tiny"), data / "data.jsonl", tmp_path / "run", sequence_length=6, shard_size=8,
                    scheduler=cluster.scheduler_address, progress=False)


FORKED_RUN = """
import sys, dask, numpy as np
from bert_ref import BertBackbone
from bert_ref.scale.run import run_dataset
preset, dataset, out = sys.argv[1:]
model = BertBackbone.from_preset(preset, dtype="float64")
model({"token_ids": np.full((64, 24), 7)})  # this process's thread pool now exists
with dask.config.set({"multiprocessing.context": "fork"}):
    m = run_dataset(preset, dataset, out, dtype="float64", shard_size=16, scheduler="processes", workers=2,
                    progress=False)
print("complete" if m["complete"] else "incomplete")
"""


def test_forked_process_workers_do_not_hang(data, tmp_path):
    """A forward in the parent first, then forked workers run forwards (a hang fails on the timeout)."""
    r = subprocess.run([sys.executable, "-c", FORKED_RUN, str(data / "tiny"), str(data / "data.jsonl"),
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "complete", r.stderr
    check_against_single_forward(data, tmp_path / "run")


# -- the command line (processes scheduler: spawned workers must not hang) ---------------------------


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "bert_ref", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BERT_REF_OFFLINE": "1"})


def test_cli_run_on_processes_then_compare_and_resume(data, tmp_path):
    out = tmp_path / "run"
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", out, "--dtype", "float32",
            "--shard-size", "16", "--scheduler", "processes", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "40 records in 3 shards; 3 computed, 0 skipped" in r.stdout and "2 worker(s) x 1 thread(s)" in r.stdout
    r = cli("compare", data / "tiny", "--dataset", data / "data.jsonl", "--candidate", out, "--truth",
            "--shard-size", "16", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # our float32 against the float64 truth: within the default atol 1e-5 (float32 rounding of a
    # 2-layer network of width 16 stays near 1e-7).
    seq = next(e for e in report["entries"] if e["key"] == "sequence_output")
    assert report["passed"] and seq["valid"]["max_abs_error"] < 1e-5
    assert seq["valid"]["max_abs_error"] > 0  # float32 really was compared with float64
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", out, "--dtype", "float32",
            "--shard-size", "16", "--scheduler", "synchronous")
    assert r.returncode == 0 and "3 of 3 shards verified by sha256 and skipped, 0 to compute" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--input", "x.npz"], "--dataset runs take --out and --outputs, not --input"),
    (["--scheduler", "bogus"], "--scheduler 'bogus': use local, processes, synchronous, or a Dask scheduler address"),
    (["--outputs", "attention_probs"], "choose from sequence_output, pooled_output, hidden_states"),
    (["--shard-size", "0"], "--shard-size must be a positive integer"),
])
def test_cli_dataset_usage_errors(data, tmp_path, args, message):
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", tmp_path / "run", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_cli_bad_record_is_a_one_line_usage_error(data, tmp_path):
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", tmp_path / "run", "--sequence-length", "6",
            "--scheduler", "synchronous")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "record" in r.stderr and "data.jsonl:" in r.stderr
