"""The one atomic writer (bert_ref.io.atomic): fresh unpredictable temporary names that never follow
a symlink, whole files or nothing, permissions from the umask, and only its own temporary file
removed on failure."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bert_ref.io import atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_write_bytes_and_text_replace_the_target_with_the_umask_mode(tmp_path, umask_027):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    assert atomic.write_bytes(target, b"new bytes") == target
    assert target.read_bytes() == b"new bytes"
    # mkstemp creates 0600; the file gets what open(path, "w") would give under this umask.
    assert target.stat().st_mode & 0o777 == 0o640
    atomic.write_text(tmp_path / "t.txt", "h\u00e9\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9\n"
    assert _names(tmp_path) == {"out.bin", "t.txt"}
    assert atomic.umask() == 0o027


def test_streaming_writers_and_name_taking_writers(tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3)}
    with atomic.open_atomic(tmp_path / "x.npz") as f:
        np.savez(f, **arrays)
    assert np.array_equal(np.load(tmp_path / "x.npz")["a"], arrays["a"])
    with atomic.open_atomic(tmp_path / "x.json", "w") as f:
        f.write('{"k": 1}\n')
    assert (tmp_path / "x.json").read_text() == '{"k": 1}\n'
    from safetensors.numpy import load_file, save_file

    with atomic.atomic_path(tmp_path / "w.safetensors") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".w.safetensors.") and tmp.exists()
        save_file(arrays, str(tmp))
    assert np.array_equal(load_file(tmp_path / "w.safetensors")["a"], arrays["a"])
    af = atomic.AtomicFile(tmp_path / "shard.bin")
    os.pwrite(af.fd, b"world", 6)
    os.pwrite(af.fd, b"hello ", 0)
    af.commit()
    assert (tmp_path / "shard.bin").read_bytes() == b"hello world"
    assert _names(tmp_path) == {"x.npz", "x.json", "w.safetensors", "shard.bin"}


def test_a_failure_leaves_the_target_unchanged_and_removes_only_its_own_temporary_file(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"previous")
    # Files of the user's that look like temporary files, ours or anyone's, are not touched.
    foreign = {"thesis.tmp-backup": b"my thesis", ".out.npz.abcdefgh.tmp": b"someone's", "out.npz.tmp": b"x"}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic.open_atomic(target) as f:
            f.write(b"partial")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"previous"
    assert _names(tmp_path) == {"out.npz", *foreign}
    assert all((tmp_path / n).read_bytes() == d for n, d in foreign.items())


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # The first name mkstemp will try is taken by a symlink to the victim: O_EXCL refuses it and
    # another name is drawn.
    names = iter(["planted1", "fresh000"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / ".out.txt.planted1.tmp").symlink_to(victim)
    atomic.write_text(tmp_path / "out.txt", "report")
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.txt").read_text() == "report" and not (tmp_path / "out.txt").is_symlink()
    assert (tmp_path / ".out.txt.planted1.tmp").is_symlink()  # not ours: left alone


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.txt").symlink_to(victim)
    atomic.write_text(tmp_path / "out.txt", "report")
    assert victim.read_text() == "precious" and (tmp_path / "out.txt").read_text() == "report"


def test_os_errors_name_the_target(tmp_path):
    missing = tmp_path / "no-such-dir" / "out.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"No such file or directory: '{missing}'")):
        atomic.write_text(missing, "x")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(f"Is a directory: '{directory}'")) as e:
        atomic.write_bytes(directory, b"x")
    assert e.value.errno == errno.EISDIR
    assert _names(tmp_path) == {"a-directory"}


def test_atomic_directory_publishes_a_whole_directory_or_nothing(tmp_path, umask_027):
    target = tmp_path / "preset"
    with atomic.atomic_directory(target) as stage:
        (stage / "config.json").write_text("{}")
    assert _names(target) == {"config.json"} and target.stat().st_mode & 0o777 == 0o750
    with pytest.raises(RuntimeError):
        with atomic.atomic_directory(tmp_path / "other") as stage:
            (stage / "half").write_text("x")
            raise RuntimeError
    assert _names(tmp_path) == {"preset"}


# -- the writers that used predictable temporary names ----------------------------------------------


def _plant(directory: Path, name: str, victim: Path) -> Path:
    """A symlink to `victim` at `name`, where the writers before bert_ref.io.atomic put their
    temporary file (`.<name>.<pid>.tmp`: predictable by anyone who can list processes)."""
    link = directory / f".{name}.{os.getpid()}.tmp"
    link.symlink_to(victim)
    return link


def test_junit_report_does_not_follow_a_symlink_at_a_temporary_name(tmp_path):
    from bert_ref.cli.compare import write_junit
    from bert_ref.oracle.compare import compare

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = _plant(tmp_path, "report.xml", victim)
    ref = {"sequence_output": np.zeros((1, 2, 3), np.float32)}
    write_junit(tmp_path / "report.xml", compare(ref, ref), "suite")
    assert victim.read_text() == "precious" and link.is_symlink()
    assert (tmp_path / "report.xml").read_text().startswith("<?xml") and not (tmp_path / "report.xml").is_symlink()


def test_trace_plot_does_not_follow_a_symlink_at_a_temporary_name(tmp_path):
    from needs import need

    need("matplotlib", 'pip install "bert-ref[plot]"')
    from bert_ref.learn.plots import plot_attention

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = _plant(tmp_path, "attention_layer_0.png", victim)
    probs = np.full((2, 3, 3), 1 / 3)
    plot_attention(probs, ["[CLS]", "a", "[SEP]"], 0, tmp_path / "attention_layer_0.png")
    assert victim.read_text() == "precious" and link.is_symlink()
    assert (tmp_path / "attention_layer_0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
