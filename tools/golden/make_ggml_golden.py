"""Record what ggml itself computes for the block-quantised formats, for tests/test_ggml.py.

Run (in the venv of tools/golden/make_llama_ports.py, with llama-cpp-python built from its sdist):

    /opt/venvs/llama/bin/python tools/golden/make_ggml_golden.py [--out golden/ggml/ggml.npz]

Everything is computed by ggml's shared libraries of the installed `llama-cpp-python`, called
through ctypes; nothing is computed here but the test input:

- **weights**: `ggml_quantize_chunk` (what `llama-quantize` calls; no importance matrix, so the
  `quantize_row_*_ref` functions) for q8_0, q4_0, q4_1, q5_0 and q5_1, de-quantised by ggml's own
  `to_float` (`dequantize_row_*`);
- **activations**: the CPU backend's `from_float` for q8_0 and q8_1 (`quantize_row_q8_0/1` of
  ggml-cpu, the AVX2 path on this machine: what the matmul applies to its float32 input), whose
  blocks are stored as ggml lays them out (q8_0: fp16 `d`, 32 int8; q8_1: fp16 `d`, fp16 `s`,
  32 int8) and split here into their fields;
- **GELU**: `ggml_table_gelu_f16`, the 65536-entry float16 table ggml-cpu fills in `ggml_cpu_init`
  and reads for `ggml_gelu` of float32 inputs in (-10, 10).

The input `x` is [32, 64] float32 (two blocks of 32 per row): rows of N(0, 1) at scales from 1e-3
to 1e2, plus rows that are all zero, constant, a single non-zero, all negative, and values on
exact multiples of a step (ties for the rounding).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from _provenance import provenance  # noqa: E402

GENERATOR = "python tools/golden/make_ggml_golden.py"
TYPES = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q8_1": 9}  # enum ggml_type
BLOCK_BYTES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24, "q8_0": 34, "q8_1": 36}

to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)
from_float_t = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)


class TypeTraits(ctypes.Structure):
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", to_float_t),
                ("from_float_ref", from_float_t)]


class TypeTraitsCPU(ctypes.Structure):
    _fields_ = [("from_float", from_float_t), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


def test_input() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(64) * s for s in (1e-3, 1e-2, 0.1, 0.5, 1, 2, 5, 10, 100)]
    rows += [rng.standard_normal(64) for _ in range(15)]
    rows.append(np.zeros(64))
    rows.append(np.full(64, 0.75))
    single = np.zeros(64)
    single[[5, 40]] = [-3.0, 2.5]
    rows.append(single)
    rows.append(-np.abs(rng.standard_normal(64)) - 0.1)
    rows.append(np.abs(rng.standard_normal(64)) + 0.1)
    for step in (1 / 8, 1 / 16, 0.3):  # ties: k * step / 2 for a block max of 127 * step or 8 * step
        rows.append(np.round(rng.uniform(-16, 16, 64) * 2) / 2 * step)
    x = np.array(rows, dtype=np.float32)
    assert x.shape == (32, 64), x.shape
    return x


def main(argv: list[str] | None = None) -> int:
    import llama_cpp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "golden" / "ggml" / "ggml.npz")
    a = p.parse_args(argv)
    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    base = ctypes.CDLL(str(lib / "libggml-base.so"), mode=os.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"), mode=os.RTLD_GLOBAL)
    cpu.ggml_cpu_init()
    base.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TypeTraitsCPU)
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = test_input()
    rows, cols = x.shape
    xp = x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    out: dict[str, np.ndarray] = {"x": x}
    for fmt in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
        buf = ctypes.create_string_buffer(rows * cols // 32 * BLOCK_BYTES[fmt])
        n = base.ggml_quantize_chunk(TYPES[fmt], xp, buf, 0, rows, cols, None)
        assert n == len(buf.raw), (fmt, n)
        deq = np.zeros(rows * cols, np.float32)
        base.ggml_get_type_traits(TYPES[fmt]).contents.to_float(buf, deq.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                                  rows * cols)
        out[f"weights/{fmt}"] = deq.reshape(rows, cols)
    for fmt in ("q8_0", "q8_1"):
        buf = ctypes.create_string_buffer(rows * cols // 32 * BLOCK_BYTES[fmt])
        cpu.ggml_get_type_traits_cpu(TYPES[fmt]).contents.from_float(xp, buf, rows * cols)
        raw = np.frombuffer(buf.raw, np.uint8).reshape(-1, BLOCK_BYTES[fmt])
        head = 2 if fmt == "q8_0" else 4
        out[f"activations/{fmt}/d"] = raw[:, :2].copy().view(np.float16).reshape(rows, cols // 32)
        if fmt == "q8_1":
            out[f"activations/{fmt}/s"] = raw[:, 2:4].copy().view(np.float16).reshape(rows, cols // 32)
        out[f"activations/{fmt}/q"] = raw[:, head:].copy().view(np.int8).reshape(rows, cols)
    table = (ctypes.c_uint16 * 65536).in_dll(cpu, "ggml_table_gelu_f16")
    out["gelu_f16_table"] = np.frombuffer(bytes(table), np.uint16).copy()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **out)
    meta = {"generator": GENERATOR, "file": a.out.name,
            "what": "ggml's own block quantisation (weights: ggml_quantize_chunk + to_float; activations: the CPU "
                    "backend's from_float for q8_0/q8_1, fields split from ggml's block layout) of the input x, "
                    "and ggml-cpu's ggml_table_gelu_f16",
            "llama_cpp_python": metadata.version("llama-cpp-python"),
            "cpu_flags": sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags")
                                 for f in line.split(":")[1].split() if f.startswith(("avx", "f16c", "fma"))}),
            "provenance": provenance()}
    (a.out.parent / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{a.out}: {a.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
