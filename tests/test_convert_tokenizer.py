"""`bert-ref convert` keeps the tokenizer's behaviour, and `info` says what the tokenizer does.

The truth of a text dataset is only right if the converted preset packs the text exactly as the
original does: a corpus (the tokenizer golden's 1,236 lines plus cases aimed at each setting:
capitals, accents, special tokens written in the text, CJK) is tokenized through the original and
the converted preset, and the ids must be identical, for every kind of source: a Hugging Face
directory (the installed all-MiniLM-L6-v2, with and without vocab.txt, uncased and cased), the
keras-hub layout, a native preset, and a native preset converted again. Ids are integers: equality
is the only tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from bert_ref import BertBackbone
from bert_ref.cli import main
from bert_ref.io.checkpoints.native import save_preset
from bert_ref.text.tokenizer import BertTokenizer, preset_tokenizer_settings

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EXTRA = ["Héllo WORLD, café ÉCOLE naïve", "[CLS] the [SEP] cat [MASK] sat [PAD] [UNK]", "Straße ß İstanbul",
         "東京 では 雨 が 降った", "MiXeD CaSe and ÀÉÎÕÜ accents", "e\u0301 combining accent", "a[SEP]b"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    lines = [json.loads(line) for line in (GOLDEN / "tokenizer" / "corpus.jsonl").read_text("utf-8").splitlines()]
    return lines + EXTRA


def ids(preset: Path, corpus: list[str]) -> list[list[int]]:
    tok = BertTokenizer.from_preset(preset)
    return [tok.encode(text) for text in corpus]


def convert(src: Path, dst: Path, capsys) -> str:
    assert main(["convert", str(src), str(dst), "--dtype", "float64"]) == 0
    return capsys.readouterr().out


def hf_variant(minilm_dir: Path, tmp_path: Path, *, vocab_txt: bool = True, lowercase: bool = True) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if name == "vocab.txt" and not vocab_txt:
            continue
        if name == "tokenizer_config.json" and not lowercase:
            cfg = json.loads((minilm_dir / name).read_text())
            cfg["do_lower_case"] = False
            (d / name).write_text(json.dumps(cfg))
        else:
            os.symlink(minilm_dir / name, d / name)
    return d


def native_source(tmp_path: Path) -> Path:
    vocab = (GOLDEN / "keras_preset" / "tiny" / "preset" / "assets" / "tokenizer" / "vocabulary.txt").read_text(
        "utf-8").splitlines()
    model = BertBackbone(vocabulary_size=len(vocab), num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                         max_sequence_length=32, seed=0)
    return save_preset(tmp_path / "native", model.config, model.weights,
                       metadata={"vocabulary": vocab, "lowercase": True})


def check_same(src: Path, dst: Path, corpus: list[str]) -> None:
    want, got = ids(src, corpus), ids(dst, corpus)
    differ = [i for i, (a, b) in enumerate(zip(want, got, strict=True)) if a != b]
    assert not differ, f"{len(differ)} of {len(corpus)} lines tokenized differently, e.g. {corpus[differ[0]]!r}"
    assert preset_tokenizer_settings(dst).options() == preset_tokenizer_settings(src).options()


@pytest.mark.parametrize("variant", ["minilm", "minilm_without_vocab_txt", "minilm_cased"])
def test_convert_of_a_hugging_face_preset_keeps_its_token_ids(minilm_dir, tmp_path, corpus, capsys, variant):
    src = minilm_dir if variant == "minilm" else hf_variant(
        minilm_dir, tmp_path, vocab_txt=variant != "minilm_without_vocab_txt", lowercase=variant != "minilm_cased")
    out = convert(src, tmp_path / "f64", capsys)
    assert "tokenizer kept" in out
    check_same(src, tmp_path / "f64", corpus)
    # The corpus does tell the settings apart: lowercasing and special tokens in text change ids.
    tok = BertTokenizer.from_preset(src)
    assert tok.encode("[SEP]") == [tok.sep_token_id]
    assert (tok.encode("Hello") == tok.encode("hello")) == (variant != "minilm_cased")


def test_convert_of_a_keras_hub_preset_keeps_its_token_ids(tmp_path, corpus, capsys):
    src = GOLDEN / "keras_preset" / "tiny" / "preset"
    convert(src, tmp_path / "f64", capsys)
    check_same(src, tmp_path / "f64", corpus)
    assert preset_tokenizer_settings(tmp_path / "f64").special_tokens_in_strings is False


def test_convert_of_a_native_preset_and_of_a_converted_one_keep_their_token_ids(tmp_path, corpus, capsys):
    src = native_source(tmp_path)
    convert(src, tmp_path / "once", capsys)
    check_same(src, tmp_path / "once", corpus)
    convert(tmp_path / "once", tmp_path / "twice", capsys)
    check_same(src, tmp_path / "twice", corpus)


def test_info_reports_what_the_tokenizer_does(minilm_dir, tmp_path, capsys):
    convert(minilm_dir, tmp_path / "f64", capsys)
    for preset in (minilm_dir, tmp_path / "f64"):
        assert main(["info", str(preset)]) == 0
        out = capsys.readouterr().out
        tok = BertTokenizer.from_preset(preset)
        assert tok.lowercase and tok.special_tokens_in_strings
        assert "lowercase                  True" in out
        assert "special_tokens_in_strings  True" in out
        assert "strip_accents              True" in out


def test_converted_weights_are_readable_as_the_umask_says(minilm_dir, tmp_path, capsys):
    # A cluster worker running as another user must be able to read the preset (0600 would not).
    old = os.umask(0o022)
    try:
        convert(minilm_dir, tmp_path / "f64", capsys)
    finally:
        os.umask(old)
    for f in (tmp_path / "f64").rglob("*"):
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_a_native_metadata_setting_that_is_not_a_boolean_is_named(tmp_path):
    src = native_source(tmp_path)
    meta = json.loads((src / "metadata.json").read_text())
    meta["tokenizer"]["strip_accents"] = "yes"
    (src / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata.json: tokenizer.strip_accents must be true, false or null"):
        BertTokenizer.from_preset(src)
    shutil.rmtree(src)
