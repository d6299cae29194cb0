"""The memory-mapped safetensors reader: agrees with the `safetensors` package, rejects bad files."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from bert_ref.io.checkpoints import SafetensorsError, read_safetensors, write_safetensors
from bert_ref.io.checkpoints.safetensors_io import read_header


def _memmap_base(array: np.ndarray):
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    return base


def _raw(path, header: dict, data: bytes, *, length: int | None = None) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)


def test_reads_what_the_safetensors_package_wrote(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal((7,)).astype(np.float64),
        "c": rng.standard_normal((2, 2, 2)).astype(np.float16),
        "d": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
        "e": np.arange(6, dtype=np.int64).reshape(2, 3),
        "f": np.array([True, False, True]),
        "g": np.zeros((0, 4), np.float32),
    }
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"k": "v"})
    ours, metadata = read_safetensors(tmp_path / "x.safetensors")
    theirs = load_file(str(tmp_path / "x.safetensors"))
    assert metadata == {"k": "v"}
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        assert ours[name].shape == value.shape, name
        assert np.array_equal(ours[name].view(np.uint8), value.view(np.uint8)), name


def test_tensors_are_read_only_views_of_one_memory_map(tmp_path):
    save_file({"a": np.ones((64, 64), np.float32), "b": np.zeros(3, np.float32)}, str(tmp_path / "x.safetensors"))
    tensors, _ = read_safetensors(tmp_path / "x.safetensors")
    bases = {id(_memmap_base(t)) for t in tensors.values()}
    assert len(bases) == 1 and _memmap_base(tensors["a"]) is not None
    assert not tensors["a"].flags.owndata
    with pytest.raises(ValueError):
        tensors["a"][0, 0] = 2.0


def test_write_then_read_is_bit_exact_for_transposed_views(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_safetensors(tmp_path / "x.safetensors", {"t": a.T, "u": a})
    tensors, _ = read_safetensors(tmp_path / "x.safetensors")
    assert np.array_equal(tensors["t"], a.T) and tensors["t"].shape == (4, 3)
    assert not list(tmp_path.glob("*.tmp"))


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcdefghij/._0123456789", min_size=1, max_size=12),
        st.tuples(
            st.sampled_from(["float32", "float64", "float16", "int32", "uint8"]),
            st.lists(st.integers(0, 4), min_size=0, max_size=3),
        ),
        max_size=5,
    )
)
def test_round_trip_of_any_tensor_dict(tmp_path_factory, spec):
    rng = np.random.default_rng(1)
    tensors = {k: (rng.standard_normal(shape) * 100).astype(dtype) for k, (dtype, shape) in spec.items()}
    path = tmp_path_factory.mktemp("rt") / "x.safetensors"
    write_safetensors(path, tensors)
    back, _ = read_safetensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


def _valid(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"alpha": np.ones((4, 4), np.float32), "beta": np.ones(8, np.float32)}, str(path))
    return path


def test_truncated_file_names_the_file_and_tensor(tmp_path):
    path = _valid(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match=r"w\.safetensors.*tensor 'beta'.*truncated"):
        read_safetensors(path)


def test_file_shorter_than_the_length_field(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(SafetensorsError, match=r"w\.safetensors: truncated.*8-byte header length"):
        read_safetensors(tmp_path / "w.safetensors")


def test_header_cut_short(tmp_path):
    path = _valid(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:20])
    with pytest.raises(SafetensorsError, match="truncated safetensors file: the header needs"):
        read_safetensors(path)


def test_absurd_header_length(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(SafetensorsError, match=r"header length 4611686018427387904 is outside \[2, 100000000\]"):
        read_safetensors(path)


def test_header_not_json(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(SafetensorsError, match="header is not UTF-8 JSON"):
        read_safetensors(path)


def test_unknown_dtype(tmp_path):
    _raw(tmp_path / "w.safetensors", {"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(SafetensorsError, match=r"tensor 'x': unknown dtype 'F128'; known dtypes: \[.*'F32'"):
        read_safetensors(tmp_path / "w.safetensors")


def test_byte_length_must_match_shape_and_dtype(tmp_path):
    _raw(tmp_path / "w.safetensors", {"x": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, bytes(20))
    with pytest.raises(SafetensorsError, match=r"tensor 'x': F32 shape \[2, 3\] needs 24 bytes, but data_offsets \[0, "
                                               r"20\] span 20"):
        read_safetensors(tmp_path / "w.safetensors")


def test_gap_between_tensors(tmp_path):
    header = {
        "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "y": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    _raw(tmp_path / "w.safetensors", header, bytes(12))
    with pytest.raises(SafetensorsError, match=r"tensor 'y': corrupt safetensors file: a gap before byte 8"):
        read_safetensors(tmp_path / "w.safetensors")


def test_overlapping_tensors(tmp_path):
    header = {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
    }
    _raw(tmp_path / "w.safetensors", header, bytes(8))
    with pytest.raises(SafetensorsError, match=r"an overlap at byte 4"):
        read_safetensors(tmp_path / "w.safetensors")


def test_trailing_bytes(tmp_path):
    _raw(tmp_path / "w.safetensors", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(9))
    with pytest.raises(SafetensorsError, match="tensors cover 4 bytes but the data section has 9"):
        read_safetensors(tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [1]}, "must have dtype, shape and data_offsets"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape must be a list of non-negative integers"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, r"data_offsets must be \[begin, end\]"),
        ({"dtype": 3, "shape": [1], "data_offsets": [0, 4]}, "dtype must be a string"),
    ],
)
def test_malformed_entries(tmp_path, entry, message):
    _raw(tmp_path / "w.safetensors", {"x": entry}, bytes(4))
    with pytest.raises(SafetensorsError, match=message):
        read_header(tmp_path / "w.safetensors")


def test_bad_metadata(tmp_path):
    _raw(tmp_path / "w.safetensors", {"__metadata__": {"a": 1}}, b"")
    with pytest.raises(SafetensorsError, match="__metadata__ must map strings to strings"):
        read_safetensors(tmp_path / "w.safetensors")


def test_empty_file_of_tensors_is_fine(tmp_path):
    _raw(tmp_path / "w.safetensors", {}, b"")
    assert read_safetensors(tmp_path / "w.safetensors") == ({}, {})


def test_a_file_written_from_header_bytes_is_read_by_the_safetensors_package_and_from_memory(tmp_path):
    # header_bytes is for writers that write the data themselves (dataset shards, oracle cache
    # entries): the safetensors package must read what they write, and parse_header (a whole file in
    # memory) must agree with read_header (a path).
    from bert_ref.io.checkpoints.safetensors_io import header_bytes, parse_header

    arrays = {"b": np.arange(6, dtype=np.int8).reshape(2, 3), "a": np.linspace(0, 1, 5),
              "h": np.arange(4, dtype=np.float16), "s": np.asarray(np.float32(2.5)), "e": np.zeros((0, 3), np.int64)}
    prefix, spans = header_bytes({k: (v.dtype, v.shape) for k, v in arrays.items()}, {"format": "test"})
    data = bytearray(max(end for _, end in spans.values()))
    for k, (begin, end) in spans.items():
        data[begin:end] = arrays[k].tobytes()
        assert begin % arrays[k].dtype.itemsize == 0  # every array aligned
    assert len(prefix) % 8 == 0
    path = tmp_path / "x.safetensors"
    path.write_bytes(prefix + bytes(data))
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    assert all(loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v) for k, v in arrays.items())
    assert parse_header(np.frombuffer(path.read_bytes(), np.uint8), str(path)) == read_header(path)
    assert read_header(path)[1] == {"format": "test"}
    with pytest.raises(SafetensorsError, match="in memory: .* the file is truncated"):
        parse_header(path.read_bytes()[:-1], "in memory")
