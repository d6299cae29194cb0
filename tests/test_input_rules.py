"""One reader and one error style for every input path (docs/conformance.md, "Input rules").

Each test is one way in which the dataset path, the one-batch path, the Python API and the text
commands used to read or report the same input differently: a complex candidate passing in dataset
mode, invalid UTF-8 turned into [UNK] on standard input, errors that named no file, record, address
or cause. Servers listen on 127.0.0.1 only, accept for a bounded time and stop by themselves.
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bert_ref import BertBackbone, compare_to_truth
from bert_ref.io.arrays import ArrayFileError, read_arrays
from bert_ref.oracle.candidates import read_candidate, read_inputs
from bert_ref.scale.dataset import DatasetError, open_dataset
from bert_ref.testing import assert_close_to_reference
from bert_ref.text.tokenizer import BertTokenizer

from needs import need
from test_cli import assert_usage_error

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + [
    "the", "cat", "sat", "on", "mat", "##s", "dog", "a", "word", "你", "好", "世", "界"]
MAX_LEN = 24


def _preset(path: Path, **changes: int) -> Path:
    config = dict(vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                  max_sequence_length=MAX_LEN, seed=0, dtype="float64")
    config.update(changes)
    model = BertBackbone(**config)
    model.preset_metadata = {"vocabulary": VOCAB, "lowercase": True}
    model.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rules")
    _preset(d / "tiny")
    texts = ["the cat", "a dog sat", "on the mat"]
    (d / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return d


def _read(path: Path, start: int = 0, stop: int | None = None, preset: Path | None = None):  # type: ignore[no-untyped-def]
    ds = open_dataset(path)
    stop = ds.num_records if stop is None else stop
    tok = BertTokenizer.from_preset(preset) if preset is not None else None
    return ds.part(start, stop).read(start, stop, vocabulary_size=len(VOCAB), num_segments=2, max_length=MAX_LEN,
                                     tokenizer=lambda: tok)


def _need_dask() -> None:
    need("dask", 'pip install "bert-ref[scale]"')
    need("distributed", 'pip install "bert-ref[scale]"')


# -- one dtype rule for candidates ----------------------------------------------------------------

def _truth_shard(work: Path) -> dict[str, np.ndarray]:
    from bert_ref.scale.run import run_dataset

    out = work / "truth"
    if not (out / "manifest.json").exists():
        run_dataset(str(work / "tiny"), work / "data.jsonl", out, dtype="float64", scheduler="synchronous",
                    progress=False)
    from bert_ref.scale.shards import read_shard

    shard = read_shard(out / "shard-00000.safetensors")  # outputs at valid positions: padded back here
    rows = np.arange(len(shard.index))
    return {k: shard.padded(k, rows) for k in ("sequence_output", "pooled_output")}


@pytest.mark.parametrize("kind", ["complex", "int", "bool"])
def test_dataset_mode_refuses_a_candidate_that_is_not_floats(work, kind):
    # Before: the true outputs plus 1000j everywhere PASSed (exit 0, a ComplexWarning); int and bool were
    # compared as numbers. Now the one dtype rule of every path refuses them, naming the file and key.
    _need_dask()
    from bert_ref.scale.compare import compare_dataset

    shard = _truth_shard(work)
    arrays = {k: shard[k] for k in ("sequence_output", "pooled_output")}
    cast = {"complex": lambda a: a.astype(np.complex128) + 1000j, "int": lambda a: a.astype(np.int64),
            "bool": lambda a: a > 0}[kind]
    path = work / f"cand_{kind}.npz"
    np.savez(path, **{k: cast(v) for k, v in arrays.items()})
    with pytest.raises(ValueError, match=r"cand_\w+\.npz: key '(sequence_output|pooled_output)' holds "
                                         r"(complex128|int64|bool) values.*float16, bfloat16, float32 or float64"):
        compare_dataset(str(work / "tiny"), work / "data.jsonl", path, dtype="float64", scheduler="synchronous",
                        progress=False)
    # The same arrays as floats pass: the refusal is the dtype's, not the values'.
    np.savez(work / "cand_ok.npz", **arrays)
    report = compare_dataset(str(work / "tiny"), work / "data.jsonl", work / "cand_ok.npz", dtype="float64",
                             scheduler="synchronous", progress=False)
    assert report.passed


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex128])
def test_the_python_api_refuses_the_same_dtypes_as_the_files(work, dtype):
    # Before: compare_to_truth and assert_close_to_reference compared an int or bool candidate as numbers.
    model = BertBackbone.from_preset(work / "tiny")
    inputs = {"token_ids": np.array([[2, 31, 32, 3]])}
    out = model(inputs)["sequence_output"].astype(dtype)
    with pytest.raises(ValueError, match=r"key 'sequence_output' holds \w+ values.*float16, bfloat16, float32"):
        compare_to_truth(model, inputs, {"sequence_output": out})
    with pytest.raises(ValueError, match=r"candidate_outputs: key 'last_hidden_state' holds \w+ values"):
        assert_close_to_reference({"last_hidden_state": out}, model, inputs, cache=False)


def test_compare_to_truth_reads_what_the_files_read(work):
    # Before: compare_to_truth refused Hugging Face's names that compare --input and bert_ref.testing read
    # ("unknown output key 'last_hidden_state'"; "unknown input key(s) ['input_ids', 'attention_mask']").
    model = BertBackbone.from_preset(work / "tiny")
    ids, mask = np.array([[2, 31, 32, 3, 0]]), np.array([[1, 1, 1, 1, 0]])
    out = model({"token_ids": ids, "padding_mask": mask})
    report = compare_to_truth(model, {"input_ids": ids, "attention_mask": mask},
                              {"last_hidden_state": out["sequence_output"], "input_ids": ids})
    assert report.passed and [e.key for e in report] == ["sequence_output"]
    assert "last_hidden_state read as sequence_output" in report.notes
    assert "ignored the inputs stored with the outputs: input_ids" in report.notes


# -- one UTF-8 policy -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["tokenize", "embed"])
def test_invalid_utf8_on_stdin_is_an_error_naming_the_line_and_byte(work, env, command):
    # Before: the bytes became U+FFFD, tokenized as [UNK], exit 0, while the dataset path refused them.
    r = subprocess.run([sys.executable, "-m", "bert_ref", command, str(work / "tiny")],
                       input=b"the cat\n\xff\xfe dog\n", capture_output=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "<stdin>:2: not valid UTF-8" in err and "byte offset 8" in err and "iconv" in err, err
    assert r.stdout == b""


@pytest.mark.parametrize("args, where", [
    (["tokenize", "{tiny}", b"the \xff cat"], "TEXT argument 1"),
    (["tokenize", "{tiny}", "the cat", "--sequence-length", "8", "--pair", b"\xe9t\xe9"], "--pair"),
    (["embed", "{tiny}", "the cat", b"caf\xe9"], "TEXT argument 2"),
    (["trace", "{tiny}", b"caf\xe9"], "TEXT"),
], ids=["tokenize", "pair", "embed", "trace"])
def test_invalid_utf8_in_an_argument_is_the_same_error(work, env, args, where):
    # Before: the bytes reached the tokenizer as lone surrogates and were tokenized as [UNK], exit 0.
    argv = [a if isinstance(a, bytes) else a.format(tiny=work / "tiny").encode() for a in args]
    r = subprocess.run([sys.executable.encode(), b"-m", b"bert_ref", *argv], capture_output=True, env=env, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.decode()
    assert f"{where}: not valid UTF-8: byte " in err and len(err.strip().splitlines()) == 1, err


def test_the_dataset_path_reports_invalid_utf8_the_same_way(work):
    (work / "bad.jsonl").write_bytes(b'{"text": "the cat"}\n{"text": "\xff dog"}\n')
    with pytest.raises(DatasetError, match=r"record 1 \(bad.jsonl:2\): not valid UTF-8: byte ff at byte offset 30"):
        _read(work / "bad.jsonl", preset=work / "tiny")


def test_a_lone_cr_inside_a_text_line_is_part_of_the_text(work):
    # Before: the index split lines at LF and the reader at CR too: "changed since it was indexed".
    (work / "cr.txt").write_bytes(b"the cat\r\na\rdog\nsat\n")
    recs = _read(work / "cr.txt", preset=work / "tiny")
    tok = BertTokenizer.from_preset(work / "tiny")
    assert recs.index.tolist() == [0, 1, 2]
    assert recs.sources == ["cr.txt:1", "cr.txt:2", "cr.txt:3"]
    # CR is white space to the tokenizer: "a\rdog" is the words "a" and "dog"; CRLF's CR is dropped.
    assert recs.token_ids[1].tolist() == [tok.cls_token_id, *tok.encode("a dog"), tok.sep_token_id]
    assert recs.token_ids[0].tolist() == [tok.cls_token_id, *tok.encode("the cat"), tok.sep_token_id]


def test_a_bom_at_the_start_of_a_jsonl_file_is_skipped(work):
    # Before: "not a JSON object (Unexpected UTF-8 BOM ...)" for record 0, though every Windows editor writes one.
    (work / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "the cat"}\n{"text": "a dog"}\n')
    tok = BertTokenizer.from_preset(work / "tiny")
    recs = _read(work / "bom.jsonl", preset=work / "tiny")
    assert recs.token_ids[0].tolist() == [tok.cls_token_id, *tok.encode("the cat"), tok.sep_token_id]


def test_a_5000_digit_integer_in_jsonl_names_the_file_record_and_limit(work):
    # Before: "Exceeds the limit (4300 digits) for integer string conversion ...", no file or record.
    (work / "big.jsonl").write_text('{"text": "the cat"}\n{"text": "a", "n": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=r"record 1 \(big.jsonl:2\): a number with 5,000 digits, over the limit "
                                         r"of 4,300 digits"):
        _read(work / "big.jsonl", preset=work / "tiny")


# -- what a path is, and OS errors with their path ------------------------------------------------

def test_a_pipe_as_dataset_is_refused_by_name(work):
    # Before: a pipe was indexed (and consumed), then "File or stream is not seekable." with no name.
    r, w = os.pipe()
    os.write(w, (work / "data.jsonl").read_bytes())
    os.close(w)
    try:
        with pytest.raises(OSError, match=rf"--dataset /dev/fd/{r}: is a pipe .*save it to a file first"):
            ds = open_dataset(f"/dev/fd/{r}")
            _read(Path(ds.path), preset=work / "tiny")
    finally:
        os.close(r)


def test_a_process_substitution_dataset_is_refused_by_name(work, env):
    _need_dask()
    if shutil.which("bash") is None:
        pytest.skip("needs bash for <(...)")
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m bert_ref run "{work / "tiny"}" --dataset '
                        f'<(cat "{work / "data.jsonl"}") --out "{work / "piped"}" --no-progress'],
                       capture_output=True, text=True, env=env, timeout=120)
    assert_usage_error(r, "--dataset /dev/fd/", "is a pipe", "save it to a file first")


def _run_dataset_cli(env, work, out, *extra, preexec=None):  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "bert_ref", "run", str(work / "tiny"), "--dataset",
                           str(work / "many.jsonl"), "--out", str(out), "--dtype", "float64", "--no-progress",
                           "--shard-size", "8", *extra], capture_output=True, text=True, env=env, timeout=120,
                          preexec_fn=preexec)


@pytest.fixture(scope="module")
def many(work: Path) -> Path:
    (work / "many.jsonl").write_text("".join(json.dumps({"text": "the cat sat on the mat a dog"}) + "\n"
                                             for _ in range(64)))
    return work / "many.jsonl"


def test_a_file_size_limit_names_the_shard_being_written(work, env, many, tmp_path):
    # Before: "[Errno 27] File too large", no path.
    _need_dask()

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))

    r = _run_dataset_cli(env, work, tmp_path / "out", preexec=preexec)
    assert_usage_error(r, f"{tmp_path / 'out'}/", "cannot write: file too large (EFBIG)", "ulimit -f")


@pytest.mark.parametrize("command", ["convert", "run"])
def test_a_file_size_limit_in_the_safetensors_writer_names_the_file(work, env, tmp_path, command):
    # Before: "safetensors: Error while serializing: I/O error: File too large (os error 27)", no path.
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))

    np.savez(tmp_path / "in.npz", token_ids=np.full((8, 20), 31, np.int64))
    args = [str(tmp_path / "converted")] if command == "convert" else [
        "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "out.safetensors"), "--hidden-states"]
    r = subprocess.run([sys.executable, "-m", "bert_ref", command, str(work / "tiny"), *args], capture_output=True,
                       text=True, env=env, timeout=120, preexec_fn=preexec)
    name = "model.safetensors: " if command == "convert" else f"{tmp_path / 'out.safetensors'}: "
    assert_usage_error(r, name, "cannot write: file too large (EFBIG)", "ulimit -f")


def test_a_full_disk_names_the_shard_being_written(work, env, many, tmp_path):
    # Before: "[Errno 28] No space left on device", no path. A 64 KiB tmpfs, mounted in a mount
    # namespace of the child's own (as root, or through a user namespace where the system allows it).
    _need_dask()
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = [] if os.geteuid() == 0 else ["-r"]
    probe = subprocess.run(["unshare", *prefix, "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{mnt}'"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or user namespaces)")
    cmd = (f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && exec '{sys.executable}' -m bert_ref run '{work / 'tiny'}' "
           f"--dataset '{work / 'many.jsonl'}' --out '{mnt / 'out'}' --dtype float64 --no-progress --shard-size 8")
    r = subprocess.run(["unshare", *prefix, "-m", "sh", "-c", cmd], capture_output=True, text=True, env=env,
                       timeout=120)
    assert_usage_error(r, f"{mnt / 'out'}/", "cannot write: no space left on device (ENOSPC)", "free space")


def test_a_failed_first_run_does_not_block_its_rerun(work, tmp_path):
    # Before: the manifest of a run that failed on record 1 refused the rerun on the fixed file
    # ("holds a different run: its dataset_sha256 ...").
    _need_dask()
    from bert_ref.scale.run import run_dataset

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the cat"}\n{"text": "' + "a " * 30 + '"}\n')  # record 1: 32 tokens of 24 allowed
    with pytest.raises(DatasetError, match=r"record 1 \(d.jsonl:2\): 32 tokens after packing"):
        run_dataset(str(work / "tiny"), data, tmp_path / "out", scheduler="synchronous", progress=False)
    assert (tmp_path / "out" / "manifest.json").exists()
    data.write_text('{"text": "the cat"}\n{"text": "a dog"}\n')
    log: list[str] = []
    manifest = run_dataset(str(work / "tiny"), data, tmp_path / "out", scheduler="synchronous", progress=False,
                           log=log.append)
    assert manifest["complete"] and any("completed no shard; starting afresh" in line for line in log)
    # A run that did complete a shard still guards its directory against another dataset.
    data.write_text('{"text": "the dog"}\n')
    with pytest.raises(ValueError, match="holds a different run: its dataset_sha256"):
        run_dataset(str(work / "tiny"), data, tmp_path / "out", scheduler="synchronous", progress=False)


# -- array files ----------------------------------------------------------------------------------

def test_uint64_ids_are_reported_with_their_value(work):
    # Before: 2**64 - 1 was cast to int64 first and reported as -1.
    np.savez(work / "u64.npz", token_ids=np.array([[2, 2**64 - 1, 3]], np.uint64))
    with pytest.raises(DatasetError, match=r"record 0 \(u64.npz row 0\): token_ids\[1\] = 18446744073709551615 is "
                                           r"outside \[0, 44\)"):
        _read(work / "u64.npz")


@pytest.mark.parametrize("reader", ["inputs", "candidate", "dataset"])
def test_an_npz_holding_a_pickle_is_named_as_such(work, reader):
    # Before: "inflates to 285 bytes but its header declares 8 bytes of object (1,); the file is corrupt"
    # (one batch), or a key error (dataset).
    path = work / f"pickle_{reader}.npz"
    key = "sequence_output" if reader == "candidate" else "token_ids"
    np.savez(path, **{key: np.array([[{"a": 1}, 2]], dtype=object)})
    read = {"inputs": read_inputs, "candidate": read_candidate, "dataset": open_dataset}[reader]
    with pytest.raises(ValueError, match=rf"pickle_{reader}.npz: key '{key}' holds pickled Python objects "
                                         r"\(dtype object\), which are never loaded"):
        read(path)
    with pytest.raises(ArrayFileError, match="never loaded"):
        read_arrays(path)


# -- Dask addresses -------------------------------------------------------------------------------

@contextmanager
def _server(reply: bytes | None, seconds: float = 30.0) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that sends `reply` to each connection (None: reads, then sends an
    HTTP error, as a web server does), accepting for at most `seconds`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        deadline = threading.Timer(seconds, stop.set)
        deadline.start()
        try:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    try:
                        if reply is None:
                            conn.recv(65536)
                            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        else:
                            conn.sendall(reply)
                    except OSError:
                        pass
        finally:
            deadline.cancel()
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("reply, said", [
    (b"\xff" * 64, "does not speak Dask's protocol: its first bytes announce a message of 18,446,744,073,709,551,615"),
    ((2**62).to_bytes(8, "little") * 4, "announce a message of 4,611,686,018,427,387,904 bytes"),
    (None, "accepted the connection but sent nothing within 2 s"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "answered 'HTTP/1.1'... (an HTTP server)"),
], ids=["garbage", "big-frame", "http-waits", "http-answers"])
def test_a_scheduler_address_that_is_not_a_dask_scheduler(work, env, reply, said):
    # Before: "Maximum allowed dimension exceeded", or "out of memory... run smaller batches", or a hang.
    _need_dask()
    with _server(reply) as address:
        r = subprocess.run([sys.executable, "-m", "bert_ref", "run", str(work / "tiny"), "--dataset",
                            str(work / "data.jsonl"), "--out", str(work / "dask_out"), "--no-progress",
                            "--scheduler", address], capture_output=True, text=True, timeout=100,
                           env=dict(env, BERT_REF_CONNECT_TIMEOUT="2"))
    assert_usage_error(r, f"--scheduler {address}: ", said, "expected a Dask scheduler there", "dask scheduler --host")
    assert "out of memory" not in r.stderr and "Maximum allowed dimension" not in r.stderr


def test_a_real_web_server_on_the_scheduler_port(work, env):
    _need_dask()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    stopper = threading.Timer(60, server.shutdown)
    stopper.start()
    try:
        address = f"tcp://127.0.0.1:{server.server_address[1]}"
        r = subprocess.run([sys.executable, "-m", "bert_ref", "run", str(work / "tiny"), "--dataset",
                            str(work / "data.jsonl"), "--out", str(work / "web_out"), "--no-progress",
                            "--scheduler", address], capture_output=True, text=True, timeout=100,
                           env=dict(env, BERT_REF_CONNECT_TIMEOUT="2"))
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
    assert_usage_error(r, f"--scheduler {address}: ", "sent nothing within 2 s", "expected a Dask scheduler")


# -- trace ----------------------------------------------------------------------------------------

def test_a_long_trace_plot_is_drawn_in_bounded_memory(work, env, tmp_path):
    # Before: 600 words with --plot ran out of memory drawing 33,000 x 8,300-pixel pictures (each head
    # 0.17 inch per token, every token labelled) and advised BERT_REF_MAX_ACTIVATION_BYTES, which bounds
    # something else. Now each head is at most CELL_MAX inches with at most LABELS_MAX labels an axis:
    # the same text is drawn, under the same 1.5 GB address-space limit.
    need("matplotlib", 'pip install "bert-ref[plot]"')
    from bert_ref.learn.plots import CELL_MAX

    _preset(tmp_path / "long", num_heads=4, max_sequence_length=1024)

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))

    r = subprocess.run([sys.executable, "-m", "bert_ref", "trace", str(tmp_path / "long"), " ".join(["word"] * 600),
                        "--plot", str(tmp_path / "plots"), "--layers", "0"], capture_output=True, text=True,
                       env=dict(env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"), timeout=300, preexec_fn=preexec)
    assert r.returncode == 0, r.stderr
    assert "BERT_REF_MAX_ACTIVATION_BYTES" not in r.stderr and "tokens (602;" in r.stdout
    png = (tmp_path / "plots" / "attention_layer_0.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width <= 80 * (4 * CELL_MAX + 0.8) and height <= 80 * (CELL_MAX + 0.6) + 1, (width, height)


def test_a_trace_out_of_memory_names_the_tokens_and_the_remedy(work, monkeypatch, capsys):
    from bert_ref.cli import main
    from bert_ref.cli import trace as trace_cli

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(trace_cli, "run_text", no_memory)
    assert main(["trace", str(work / "tiny"), "the cat sat"]) == 2
    err = capsys.readouterr().err
    assert "out of memory tracing 5 tokens" in err and "trace a shorter text" in err, err
    assert "BERT_REF_MAX_ACTIVATION_BYTES" not in err


def test_plot_warnings_are_summarised_once(work, env, tmp_path):
    # Before: one UserWarning with its source line per missing glyph per picture (dozens of lines),
    # and "Tight layout not applied" the same way.
    need("matplotlib", 'pip install "bert-ref[plot]"')
    from matplotlib import font_manager, ft2font

    default = font_manager.findfont(font_manager.FontProperties())
    if ft2font.FT2Font(default).get_char_index(ord("你")):
        pytest.skip(f"the default font {default} has CJK glyphs: nothing to warn about")
    text = " ".join(["你好世界"] * 40)  # 160 CJK tokens: no glyph in DejaVu Sans, labels past the margins
    preset = _preset(tmp_path / "cjk", max_sequence_length=256)
    r = subprocess.run([sys.executable, "-m", "bert_ref", "trace", str(preset), text, "--plot", str(tmp_path / "plots"),
                        "--layers", "0"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    assert not [line for line in r.stderr.splitlines() if "Warning" in line or "plots.py" in line], r.stderr
    glyph = [line for line in err if "no glyph" in line]
    assert len(glyph) == 1 and glyph[0].startswith("note: 160 of 162 tokens have no glyph in the default font ("), err
    assert "show as boxes (你, 好, 世, 界); to draw them, install a font that has them" in glyph[0]
    assert len([line for line in err if "tight layout" in line]) <= 1, r.stderr
