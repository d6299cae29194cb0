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
