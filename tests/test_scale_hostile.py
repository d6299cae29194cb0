"""Hostile datasets, manifests, run directories and schedulers for `bert_ref.scale`: each attack of
the nightly-job issue gets a clear error naming the file, field or address (or a bounded cost),
never a hang, a traceback, a read outside the run directory, or a user's file removed.

Servers attacking the client listen on 127.0.0.1 only, accept a bounded number of connections and
stop by themselves; a dataset that would block (a FIFO) is tried in a subprocess with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from needs import need

need("dask", 'pip install "bert-ref[scale]"')
distributed = need("distributed", 'pip install "bert-ref[scale]"')

from test_scale_nightly import MAX_LEN, VOCAB, make_preset, write_jsonl  # noqa: E402

from bert_ref.model.limits import LimitError  # noqa: E402
from bert_ref.scale.cluster import probe  # noqa: E402
from bert_ref.scale.compare import compare_dataset  # noqa: E402
from bert_ref.scale.dataset import ArrayFile, DatasetError, load_rows, open_dataset  # noqa: E402
from bert_ref.scale.engine import Engine  # noqa: E402
from bert_ref.scale.run import locked, run_dataset  # noqa: E402
from bert_ref.scale.shards import MANIFEST  # noqa: E402
from bert_ref.text.tokenizer import BertTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    make_preset(d)
    write_jsonl(d / "data.jsonl", n=24)
    return d


def run(d: Path, out: Path, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("scheduler", "synchronous")
    kw.setdefault("dtype", "float64")
    kw.setdefault("progress", False)
    return run_dataset(str(kw.pop("preset", d / "tiny")), str(kw.pop("dataset", d / "data.jsonl")), out, **kw)


def cli(*args, cwd=None, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "bert_ref", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "BERT_REF_OFFLINE": "1", **(env or {})})


# -- datasets: sizes checked before planning, rows read by slices -------------------------------


def npy_bytes(shape, dtype, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + data


def test_an_npz_declaring_a_billion_rows_is_refused_before_anything_is_planned(data, tmp_path):
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("token_ids.npy", npy_bytes((10 ** 9, 128), np.int64, b"\0" * 64))
    assert path.stat().st_size < 400
    with pytest.raises(DatasetError, match=r"forged\.npz: key 'token_ids' declares shape \(1000000000, 128\) of int64 "
                                           r"\(1,024,000,000,000 bytes\), but the member holds 64 bytes"):
        run(data, tmp_path / "out", dataset=path)
    assert not (tmp_path / "out").exists()  # nothing planned, nothing written


def test_an_npz_truncated_inside_its_data_is_refused(data, tmp_path):
    np.savez(tmp_path / "ok.npz", token_ids=np.ones((50, 8), np.int32))
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:200] + raw[-300:])  # the central directory survives, data does not
    with pytest.raises(DatasetError, match=r"cut\.npz: key 'token_ids': the zip directory places it at byte -?[\d,]+, "
                                           r"outside the file's 500 bytes \(truncated or corrupt\)"):
        open_dataset(tmp_path / "cut.npz")


def test_an_npz_holding_pickled_objects_is_refused_without_loading_them(tmp_path):
    np.savez(tmp_path / "p.npz", token_ids=np.array([[1, 2], [3, None]], dtype=object))
    with pytest.raises(DatasetError, match="holds pickled Python objects .* which are never loaded"):
        open_dataset(tmp_path / "p.npz")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_rows_are_read_by_member_slices(tmp_path, compressed):
    ids = np.arange(100_000 * 32, dtype=np.int32).reshape(100_000, 32)  # 12.8 MB
    (np.savez_compressed if compressed else np.savez)(tmp_path / "big.npz", token_ids=ids)
    ds = open_dataset(tmp_path / "big.npz")
    f = ds.files[0]
    tracemalloc.start()
    try:
        rows = load_rows(ArrayFile(f.path, f.rows, f.width, ("token_ids",), f.members), 75_000, 75_010)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(rows["token_ids"], ids[75_000:75_010])
    # Stored: the 10 rows alone; compressed: one 1 MiB chunk of the stream at a time (the whole
    # member would be 12.8 MB).
    assert peak < (1 << 20 if not compressed else 6 << 20), peak


def test_parquet_shards_read_only_their_row_groups(data, tmp_path, monkeypatch):
    pa = need("pyarrow", 'pip install "bert-ref[parquet]"')
    import pyarrow.parquet as pq

    recs = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"text": [r["text"] for r in recs], "text_pair": [r.get("text_pair") for r in recs]}),
                   tmp_path / "d.parquet", row_group_size=4)
    calls = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kw):
        calls.append(tuple(kw.get("row_groups") or ()))
        return original(self, *args, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    a = run(data, tmp_path / "pq", dataset=tmp_path / "d.parquet")
    b = run(data, tmp_path / "js")
    assert [e["sha256"] for e in a["shards"]] == [e["sha256"] for e in b["shards"]]
    # 6 row groups of 4 records, shards of 8: each shard reads its own 2 groups, never the table.
    assert sorted(calls) == [(g,) for g in range(6)]


def test_a_parquet_row_group_decoding_past_the_limit_is_refused_when_opened(data, tmp_path, monkeypatch):
    pa = need("pyarrow", 'pip install "bert-ref[parquet]"')
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["the cat " * 200] * 20}), tmp_path / "d.parquet")
    monkeypatch.setenv("BERT_REF_MAX_INPUT_BYTES", "2000")
    with pytest.raises(LimitError, match=r"d\.parquet: row group 0 decoded is [\d,]+ bytes, over the limit of 2,000 "
                                         r"bytes \(set BERT_REF_MAX_INPUT_BYTES"):
        run(data, tmp_path / "out", dataset=tmp_path / "d.parquet")
    assert not (tmp_path / "out").exists()


def test_a_huge_line_is_tokenized_only_up_to_the_budget(data, tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"text": "the cat sat " * 1_750_000}) + "\n")  # 21 MB, 5 million words
        f.write(json.dumps({"text": "a dog"}) + "\n")
    ds = open_dataset(path)
    tok = BertTokenizer.from_preset(data / "tiny")
    tracemalloc.start()
    try:
        recs = ds.read(0, 2, vocabulary_size=len(VOCAB), num_segments=2, max_length=MAX_LEN,
                       tokenizer=lambda: tok, truncate=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recs.lengths.tolist() == [MAX_LEN, 4]
    # A few copies of the 21 MB line (the bytes read, the line, its text, the JSON text and its parse);
    # tokenizing it whole would hold millions of tokens (GBs).
    assert peak < 200 << 20, peak
    with pytest.raises(DatasetError, match=rf"record 0 \(big\.jsonl:1\): more than {MAX_LEN} tokens after packing"):
        ds.read(0, 1, vocabulary_size=len(VOCAB), num_segments=2, max_length=MAX_LEN, tokenizer=lambda: tok)


def test_a_plan_whose_manifest_would_pass_the_json_limit_is_refused_first(data, tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_REF_MAX_JSON_BYTES", "5000")
    with pytest.raises(LimitError, match=r"24 records in shards of 1 make 24 shards, whose manifest could reach "
                                         r".* use --shard-size 4 or more"):
        run(data, tmp_path / "out", shard_size=1)
    assert not (tmp_path / "out").exists()


# -- the manifest: bounded, read through the JSON limits, confined --------------------------------


@pytest.fixture()
def finished(data, tmp_path):
    out = tmp_path / "run"
    run(data, out)
    return out


def edit_manifest(out: Path, change) -> None:
    m = json.loads((out / MANIFEST).read_text())
    change(m)
    (out / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("name, change, message", [
    ("parent", lambda m: m["shards"][0].update(file="../x"),
     r"field shards\[0\]\.file is \"\.\./x\"; expected 'shard-00000\.safetensors' \(a plain name inside the run "
     r"directory\)"),
    ("absolute", lambda m: m["shards"][1].update(file="/etc/passwd"),
     r"field shards\[1\]\.file is \"/etc/passwd\"; expected 'shard-00001\.safetensors'"),
    ("not an object", lambda m: m["shards"].__setitem__(0, 7), r"field shards\[0\] is 7; expected an object"),
    ("no job", lambda m: m.pop("job"), r"field job is null; expected an object"),
    ("records", lambda m: m["shards"][2].update(records=[0, 99]), r"field shards\[2\]\.records is \[0, 99\]; "
                                                                   r"expected \[16, 24\]"),
    ("list", lambda m: m.__setitem__("shards", {"a": 1}), r"field shards is \"dict\"; expected a list"),
])
def test_a_malformed_or_escaping_manifest_is_refused_naming_its_field(data, finished, name, change, message):
    edit_manifest(finished, change)
    with pytest.raises(DatasetError, match=rf"manifest\.json: {message}"):
        run(data, finished)
    with pytest.raises(DatasetError, match=rf"manifest\.json: {message}"):
        compare_dataset(str(data / "tiny"), data / "data.jsonl", finished, reference=finished, truth=True,
                        scheduler="synchronous", progress=False)


def test_a_manifest_over_the_json_limit_is_refused_before_it_is_read(data, finished, monkeypatch):
    edit_manifest(finished, lambda m: m.update(padding="x" * 20_000))
    monkeypatch.setenv("BERT_REF_MAX_JSON_BYTES", "10000")
    with pytest.raises(LimitError, match=r"manifest\.json: the manifest is [\d,]+ bytes, over the limit of 10,000"):
        run(data, finished)


def test_a_manifest_that_is_a_fifo_or_a_symlink_is_refused_without_blocking(data, finished, tmp_path):
    (finished / MANIFEST).unlink()
    os.mkfifo(finished / MANIFEST)
    code = ("import sys; from bert_ref.scale.run import run_dataset\n"
            "try:\n run_dataset(sys.argv[1], sys.argv[2], sys.argv[3], dtype='float64', shard_size=8, "
            "scheduler='synchronous', progress=False)\nexcept ValueError as e: print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(data / "tiny"), str(data / "data.jsonl"), str(finished)],
                       capture_output=True, text=True, timeout=60)  # a read of the FIFO would block forever
    assert "manifest.json: not a regular file" in r.stdout, r.stderr
    (finished / MANIFEST).unlink()
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", finished / MANIFEST)
    with pytest.raises(DatasetError, match=r"manifest\.json: a symlink"):
        run(data, finished)


def test_swapped_shards_with_a_consistent_manifest_are_caught_not_blamed_on_the_candidate(data, finished):
    from bert_ref.scale.dataset import file_sha256

    a, b = finished / "shard-00000.safetensors", finished / "shard-00001.safetensors"
    tmp = finished / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)

    def fix(m):
        for e in m["shards"]:
            p = finished / e["file"]
            e["sha256"], e["bytes"] = file_sha256(p), p.stat().st_size

    edit_manifest(finished, fix)
    with pytest.raises(DatasetError, match=r"shard-00000\.safetensors: holds records starting at 8 \(8 records\), "
                                           r"but the manifest places it at records \[0, 8\): a swapped or foreign"):
        compare_dataset(str(data / "tiny"), data / "data.jsonl", finished, reference=finished, truth=True,
                        scheduler="synchronous", progress=False)


# -- the run directory: a lock, and only our own temporary files removed ----------------------


def test_only_our_own_temporary_files_are_removed(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = out / ".shard-00001.safetensors.ab_cd123.tmp"  # what a worker killed mid-shard leaves
    mine.write_bytes(b"x")
    keep = ["thesis.tmp-backup", "notes.txt", "shard-00001.safetensors.tmp-backup", ".shard-1.safetensors.abcdefgh.tmp",
            ".shard-00001.safetensors.toolong12.tmp"]
    for name in keep:
        (out / name).write_text("mine")
    lines = []
    run(data, out, log=lines.append)
    assert not mine.exists()
    assert any("removed 1 temporary file(s) of shards whose worker was killed" in line for line in lines)
    for name in keep:
        assert (out / name).read_text() == "mine"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") and f not in keep]  # and none of this run's


def test_a_second_run_on_the_same_directory_is_refused_while_the_first_holds_it(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with locked(out):
        with pytest.raises(OSError, match=r"another bert-ref run is using this directory \(pid \d+ on .*\); wait for "
                                          r"it to finish or use another --out"):
            run(data, out)
        r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", out, "--shard-size", "8")
        assert r.returncode == 2 and "another bert-ref run is using this directory" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert run(data, out)["complete"]  # released: the directory is usable again


# -- schedulers: timeouts and clear messages; bounded submission ------------------------------


class Server:
    """A TCP server on 127.0.0.1 that accepts up to `accepts` connections, sends `reply` (or
    nothing), holds each for `hold` seconds and closes; it stops by itself."""

    def __init__(self, reply: bytes = b"", hold: float = 3.0, accepts: int = 2):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply, self.hold, self.accepts = reply, hold, accepts
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            for _ in range(self.accepts):
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    if self.reply:
                        conn.sendall(self.reply)
                    self.stop.wait(self.hold)
                if self.stop.is_set():
                    return
        finally:
            self.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


@pytest.mark.parametrize("reply, message", [
    (b"", r"the server there accepted the connection but sent nothing within 1 s"),
    (b"\xff" * 8, r"the server there does not speak Dask's protocol: its first bytes announce a message of "
                  r"18,446,744,073,709,551,615 bytes"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", r"the server there does not speak Dask's protocol: it answered "
                                          r"'HTTP/1\.1'\.\.\. \(an HTTP server\)"),
])
def test_a_scheduler_address_that_does_not_speak_dask_gives_a_message_not_a_hang(data, tmp_path, monkeypatch,
                                                                                   reply, message):
    monkeypatch.setenv("BERT_REF_CONNECT_TIMEOUT", "1")
    server = Server(reply)
    try:
        with pytest.raises(OSError, match=rf"--scheduler {server.address}: {message}"):
            run(data, tmp_path / "out", scheduler=server.address)
    finally:
        server.close()


def test_a_closed_port_says_it_cannot_connect(data, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError, match=rf"--scheduler tcp://127\.0\.0\.1:{port}: nothing listens there"):
        probe(f"tcp://127.0.0.1:{port}", 2)


def test_tasks_are_submitted_a_window_at_a_time(tmp_path):
    engine = Engine("local", 1, 1)
    pulled = []
    seen_at_first_done = []

    def tasks():
        for i in range(50):
            pulled.append(i)
            yield (i,)

    def done(i, result):
        if not seen_at_first_done:
            seen_at_first_done.append(len(pulled))

    engine.run(_square, tasks(), done)
    assert len(pulled) == 50 and seen_at_first_done[0] <= engine.window == 2


def _square(x):
    return x * x


def test_progress_goes_to_stderr_one_line_per_shard_when_not_on_a_terminal(data, tmp_path):
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", tmp_path / "a", "--shard-size", "8")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("shard ")]
    assert len(lines) == 3 and "records/s" in lines[0] and "of 24 records" in lines[-1]
    r = cli("run", data / "tiny", "--dataset", data / "data.jsonl", "--out", tmp_path / "b", "--shard-size", "8",
            "--no-progress")
    assert r.returncode == 0 and "shard " not in r.stderr


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=50) as c:
        yield c


def test_a_relative_dataset_works_on_a_cluster_and_the_summary_counts_its_workers(data, tmp_path, cluster):
    # The workers were started in another directory: a relative path must reach them absolute.
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "rel.jsonl").write_bytes((data / "data.jsonl").read_bytes())
    r = cli("run", data / "tiny", "--dataset", "rel.jsonl", "--out", "out", "--shard-size", "8",
            "--scheduler", cluster.scheduler_address, cwd=work)
    assert r.returncode == 0, r.stderr
    assert f"Dask cluster at {cluster.scheduler_address}, 2 worker(s) x 1 thread(s)" in r.stdout
    assert "?" not in r.stdout
    m = json.loads((work / "out" / MANIFEST).read_text())
    assert m["complete"] and m["job"]["dataset"] == str(work / "rel.jsonl")
