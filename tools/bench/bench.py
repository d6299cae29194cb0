"""Benchmark bert_ref's forward pass: against NumPy's own GEMM floor, transformers and keras-hub.

Run from the repository root with an interpreter that has the `bench` extra (torch, transformers,
keras-hub, jax; each anchor is skipped when missing):

    KERAS_BACKEND=jax python tools/bench/bench.py [--quick] [--repeats N] [--baseline DIR] [--write-docs]
                                            [--no-torch] [--no-keras] [--no-rss] [--no-load] [--only LABEL ...]

The headline rows are the three of the speed target, BERT-base at (8, 128) with the last quarter of
every row padded: float32 with the tanh GELU, float32 with the exact (erf) GELU, float64 with the
tanh GELU. Each is timed against transformers' `BertModel` with the *same* GELU form — the fused
`gelu_pytorch_tanh` for tanh rows, `gelu` for the exact row — in eager and sdpa attention (same
weights, `torch.set_num_threads(cores)`, `torch.inference_mode`; torch in float64 for the float64
row), and against keras-hub's `BertBackbone` on JAX for the tanh rows (jit-compiled
`predict_on_batch`, random weights of the same shapes). Further rows: BERT-base (1, 512) and the
bert_tiny shape at (32, 128).

Timing: every implementation of a row runs once to warm up, then in interleaved rounds (the order
rotating each round, 50 ms apart so that BLAS worker threads go idle), so a busy machine slows them
alike. Per row it prints the median milliseconds of each and the ratio of the medians bert_ref /
anchor (< 1: bert_ref is faster), and the spread of the per-round ratios (min-max of the pairs).
`floor` is the same GEMM shapes timed with `np.matmul` alone on the model's weights (a lower bound
for any NumPy forward). `--baseline DIR` adds another bert_ref checkout (DIR holds its `bert_ref`
package) to the same rounds, for before/after comparisons.

Then, per configuration in a fresh subprocess (bert_ref and NumPy only): resident memory. The model
is saved as a native preset and loaded back memory-mapped; `peak RSS` is the process's peak resident
memory during load, `prepare` and one forward, minus its RSS before the load. `weights` is the bytes
of the canonical weights, `copied` the bytes `prepare` had to cast (0 when the preset is stored in
the policy's dtype: the forward then computes straight from the memory-mapped file), `act` the
largest activation tensor. Target: `peak RSS <= weights + 3 * act`.

Finally, load time: a BERT-base-shaped native preset written with `BertBackbone.save_to_preset`
is loaded with `BertBackbone.from_preset` (memory-mapped safetensors: no copy of the weights) and
the same weights saved with `save_pretrained` are loaded with `transformers.BertModel.from_pretrained`.

`--write-docs` replaces the generated tables of docs/performance.md (between its `bench:begin` and
`bench:end` markers) with this run's. The header records the machine, NumPy's BLAS
(`np.show_config()`) and its thread count. A full run takes about 4-5 minutes on 2 idle cores;
`--quick` (the three headline rows, no memory or load time) about 2-3.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _provenance import cpu_name  # tools/ is on sys.path for a script run from it

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bert_ref import BertBackbone  # noqa: E402
from bert_ref.model import runtime

BASE = dict(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
            max_sequence_length=512, num_segments=2)
TINY = dict(vocabulary_size=30522, num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512,
            max_sequence_length=512, num_segments=2)

# label, architecture, batch, sequence, dtype, activation; the first three are the headline rows
CONFIGS = [
    ("base 8x128 f32 tanh", BASE, 8, 128, "float32", "gelu_approximate"),
    ("base 8x128 f32 erf", BASE, 8, 128, "float32", "gelu"),
    ("base 8x128 f64 tanh", BASE, 8, 128, "float64", "gelu_approximate"),
    ("base 1x512 f32 tanh", BASE, 1, 512, "float32", "gelu_approximate"),
    ("tiny 32x128 f32 tanh", TINY, 32, 128, "float32", "gelu_approximate"),
    ("base 1x512 f64 tanh", BASE, 1, 512, "float64", "gelu_approximate"),
    ("tiny 32x128 f64 tanh", TINY, 32, 128, "float64", "gelu_approximate"),
]
HEADLINE = 3
HF_ACT = {"gelu_approximate": "gelu_pytorch_tanh", "gelu": "gelu"}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# Machine


def machine() -> list[str]:
    lines = []
    cpu = cpu_name()
    lines.append(f"cpu: {cpu}; {cores()} cores available; {platform.platform()}")
    lines.append(f"python {platform.python_version()}, numpy {np.__version__}")
    cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
    blas = cfg.get("Build Dependencies", {}).get("blas", {})
    control = runtime.blas()
    lines.append(f"numpy BLAS (np.show_config): {blas.get('name')} {blas.get('version')}; threads: "
                 + (f"{control[1]()} (openblas_get_num_threads)" if control
                    else "unknown (no OpenBLAS thread control)"))
    parts = runtime.batch_parts(8, 128, 768)
    lines.append(f"bert_ref: runtime.THREADS={runtime.THREADS}; BERT-base 8x128 runs as {parts} batch part(s)"
                 + (" over threads, OpenBLAS at 1 thread meanwhile" if parts > 1 else ""))
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            lines.append(f"threadpool: {info.get('internal_api')} {info.get('version')} "
                         f"kernel={info.get('architecture')} threads={info.get('num_threads')} "
                         f"({os.path.basename(info.get('filepath', ''))})")
    except ImportError:
        lines.append("threadpoolctl not installed: OpenBLAS kernel unknown")
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                          "OMP_NUM_THREADS")}
    lines.append("env: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    versions = []
    for mod in ("torch", "transformers", "jax", "keras", "keras_hub"):
        try:
            m = __import__(mod)
            versions.append(f"{mod} {m.__version__}")
        except Exception:
            versions.append(f"{mod} -")
    lines.append(", ".join(versions))
    return lines


# ----------------------------------------------------------------------------------------------
# Work


def make_inputs(arch: dict, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Random ids; segment 1 on the second half of the valid part; the last quarter of each row padded."""
    rng = np.random.default_rng(0)
    valid = seq - seq // 4
    ids = rng.integers(1, arch["vocabulary_size"], (batch, seq))
    segments = np.zeros((batch, seq), np.int64)
    segments[:, valid // 2 : valid] = 1
    mask = np.zeros((batch, seq), np.int64)
    mask[:, :valid] = 1
    return {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}


def flops(arch: dict, batch: int, seq: int) -> float:
    """FLOPs of one forward's GEMMs (q/k/v, attention output, FFN, pooler) and attention matmuls."""
    t, h, f, n = batch * seq, arch["hidden_dim"], arch["intermediate_dim"], arch["num_layers"]
    per_layer = 2 * t * h * 3 * h + 2 * t * h * h + 2 * 2 * t * h * f + 2 * 2 * batch * seq * seq * h
    return n * per_layer + 2 * batch * h * h


def gemm_floor(weights: dict, arch: dict, batch: int, seq: int, dtype) -> callable:
    """The forward's GEMMs alone: same shapes, the model's own weights, preallocated outputs."""
    heads, h, f = arch["num_heads"], arch["hidden_dim"], arch["intermediate_dim"]
    d, t = h // heads, batch * seq
    rng = np.random.default_rng(1)
    x = rng.standard_normal((t, h)).astype(dtype)
    inner = rng.standard_normal((t, f)).astype(dtype)
    hid, ffn = np.empty((t, h), dtype), np.empty((t, f), dtype)
    q = rng.standard_normal((batch, heads, seq, d)).astype(dtype)
    kt = rng.standard_normal((batch, heads, d, seq)).astype(dtype)
    scores, ctx = np.empty((batch, heads, seq, seq), dtype), np.empty((batch, heads, seq, d), dtype)
    layers = weights["layers"]

    def run():
        for p in layers:
            for projection in ("query", "key", "value"):
                np.matmul(x, p[projection][0], out=hid)
            np.matmul(q, kt, out=scores)
            np.matmul(scores, q, out=ctx)
            np.matmul(x, p["output"][0], out=hid)
            np.matmul(x, p["ffn_kernel1"], out=ffn)
            np.matmul(inner, p["ffn_kernel2"], out=hid)
        np.matmul(x[:batch], weights["pooler_kernel"])

    return run


def torch_runner(model: BertBackbone, inputs: dict, act: str, attn: str):
    import torch
    import transformers

    sys.path.insert(0, str(ROOT / "tools"))
    from make_golden import hf_state_dict

    c = model.config
    torch_dtype = torch.float64 if model.dtype_policy.name == "float64" else torch.float32
    hc = transformers.BertConfig(
        vocab_size=c.vocabulary_size, hidden_size=c.hidden_dim, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, intermediate_size=c.intermediate_dim,
        max_position_embeddings=c.max_sequence_length, type_vocab_size=c.num_segments,
        hidden_act=HF_ACT[act], layer_norm_eps=c.layer_norm_epsilon, attn_implementation=attn,
    )
    hm = transformers.BertModel(hc).eval().to(torch_dtype)
    hm.load_state_dict(hf_state_dict(dict(model.weights), c.num_layers, torch_dtype), strict=True)
    feed = dict(input_ids=torch.tensor(inputs["token_ids"]), token_type_ids=torch.tensor(inputs["segment_ids"]),
                attention_mask=torch.tensor(inputs["padding_mask"]))

    def run():
        with torch.inference_mode():
            return hm(**feed).last_hidden_state

    return run


def keras_runner(arch: dict, inputs: dict, dtype: str):
    import keras_hub

    kdtype = None if dtype == "float32" else dtype
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    km = keras_hub.models.BertBackbone(**arch, dtype=kdtype)  # random weights: same shapes, same work
    feed = {k: v.astype(np.int32) for k, v in inputs.items()}
    km.predict_on_batch(feed)  # compile
    return lambda: km.predict_on_batch(feed)


def time_interleaved(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Warm each runner up once, then time `repeats` rounds of all of them (the order rotating each
    round). Returns each runner's seconds per round."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for rounds in range(repeats):
        for name in names[rounds % len(names):] + names[: rounds % len(names)]:  # rotate the order
            time.sleep(0.05)  # let the previous runner's worker threads go idle (they spin after work)
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def load_baseline(path: str):
    """Import the `bert_ref` package of another checkout (DIR/bert_ref) as `bert_ref_baseline`.

    The copy's own absolute imports (`from bert_ref.model import kernels`, the lazy names'
    "bert_ref.backbone") are renamed too, so that the baseline runs its own code throughout."""
    src = Path(path).resolve() / "bert_ref"
    if not (src / "__init__.py").exists():
        raise SystemExit(f"--baseline {path}: no bert_ref package at {src}")
    tmp = Path(tempfile.mkdtemp(prefix="bert_ref_baseline_"))
    shutil.copytree(src, tmp / "bert_ref_baseline")
    for py in (tmp / "bert_ref_baseline").rglob("*.py"):
        py.write_text(re.sub(r"\bbert_ref(?=[.\s\"])", "bert_ref_baseline", py.read_text()))
    sys.path.insert(0, str(tmp))
    import bert_ref_baseline

    loaded = [m.__file__ for name, m in sys.modules.items() if name.startswith("bert_ref_baseline.")]
    assert all(f is not None and f.startswith(str(tmp)) for f in loaded), "the baseline imports the current code"
    return bert_ref_baseline


def bench_speed(label, arch, batch, seq, dtype, act, args, baseline=None) -> dict:
    model = BertBackbone(**arch, dtype=dtype, activation=act, seed=0)
    inputs = make_inputs(arch, batch, seq)
    prepared = model.prepared_weights()
    runners = {"bert_ref": lambda: model(inputs), "floor": gemm_floor(prepared, arch, batch, seq, np.dtype(dtype))}
    if baseline is not None:
        old = baseline.BertBackbone(**arch, dtype=dtype, activation=act, weights=dict(model.weights))
        runners["baseline"] = lambda: old(inputs)
    notes = []
    if not args.no_torch:
        for attn in ("eager", "sdpa"):
            try:
                runners[f"torch {attn}"] = torch_runner(model, inputs, act, attn)
            except ImportError as e:
                notes.append(f"torch {attn}: {e}")
                break
    if not args.no_keras and act == "gelu_approximate":
        try:
            runners["keras-hub jax"] = keras_runner(arch, inputs, dtype)
        except Exception as e:  # not installed, or the backend cannot run this dtype
            notes.append(f"keras-hub: {type(e).__name__}: {str(e)[:100]}")
    repeats = args.repeats or (5 if arch is BASE else 10)
    times = time_interleaved(runners, repeats)
    return {"label": label, "times": times, "gflop": flops(arch, batch, seq) / 1e9, "notes": notes}


# ----------------------------------------------------------------------------------------------
# Memory (a fresh process per configuration: bert_ref and NumPy only)


def _rss_now() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _rss_peak() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def rss_worker(spec: dict) -> dict:
    arch, batch, seq, dtype, act = spec["arch"], spec["batch"], spec["seq"], spec["dtype"], spec["activation"]
    inputs = make_inputs(arch, batch, seq)
    item = np.dtype(dtype).itemsize
    with tempfile.TemporaryDirectory() as tmp:
        BertBackbone(**arch, dtype=dtype, activation=act, seed=0).save_to_preset(tmp)
        gc.collect()  # the saved model (it holds a reference cycle) must be gone before the baseline
        baseline = _rss_now()
        model = BertBackbone.from_preset(tmp, dtype=dtype)  # memory-mapped, as users load presets
        prepared = model.prepared_weights()
        exact = _reset_peak()
        model(inputs)
        total = _rss_peak() - baseline
    weights = sum(w.nbytes for w in model.weights.values())
    originals = list(model.weights.values())

    def arrays(tree):
        if isinstance(tree, np.ndarray):
            yield tree
        elif isinstance(tree, (list, tuple)):
            for item in tree:
                yield from arrays(item)
        elif isinstance(tree, dict):
            for item in tree.values():
                yield from arrays(item)

    # bytes of prepared arrays that are not the stored weights themselves (casts); 0 when none
    copied = sum(a.nbytes for a in arrays(dict(prepared)) if not any(np.may_share_memory(a, o) for o in originals))
    c = model.config
    act_bytes = max(batch * seq * c.intermediate_dim, batch * c.num_heads * seq * seq) * item
    return {"weights": weights, "copied": copied, "total": total, "act": act_bytes, "exact_peak": exact}


def bench_rss(arch, batch, seq, dtype, act) -> dict:
    spec = json.dumps({"arch": arch, "batch": batch, "seq": seq, "dtype": dtype, "activation": act})
    out = subprocess.run([sys.executable, __file__, "--rss-worker", spec], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Load time


def bench_load(args) -> list[str]:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        model = BertBackbone(**BASE, seed=0)
        native, hf = Path(tmp) / "native", Path(tmp) / "hf"
        model.save_to_preset(native)
        size = sum(f.stat().st_size for f in native.iterdir()) / 1e6
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            loaded = BertBackbone.from_preset(str(native))
            times.append(time.perf_counter() - t0)
        w = loaded.weights["transformer_layer_0/feedforward_intermediate_dense/kernel"]
        base = w
        while getattr(base, "base", None) is not None:
            base = base.base
        mapped = isinstance(base, np.memmap) or type(base).__name__ == "mmap"
        lines.append(f"native preset ({size:.0f} MB) BertBackbone.from_preset: {1e3 * statistics.median(times):.1f} ms "
                     f"(median of 5; weights memory-mapped: {mapped})")
        t0 = time.perf_counter()
        model(make_inputs(BASE, 1, 128))
        lines.append(f"  first forward after load (includes reading the weights from the page cache): "
                     f"{1e3 * (time.perf_counter() - t0):.0f} ms")
        if not args.no_torch:
            try:
                import torch
                import transformers

                sys.path.insert(0, str(ROOT / "tools"))
                from make_golden import hf_state_dict

                c = model.config
                hc = transformers.BertConfig(
                    vocab_size=c.vocabulary_size, hidden_size=c.hidden_dim, num_hidden_layers=c.num_layers,
                    num_attention_heads=c.num_heads, intermediate_size=c.intermediate_dim,
                    max_position_embeddings=c.max_sequence_length, type_vocab_size=c.num_segments,
                    hidden_act="gelu_pytorch_tanh")
                hm = transformers.BertModel(hc)
                hm.load_state_dict(hf_state_dict(dict(model.weights), c.num_layers, torch.float32), strict=True)
                hm.save_pretrained(hf)
                del hm
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    transformers.BertModel.from_pretrained(hf)
                    times.append(time.perf_counter() - t0)
                lines.append(f"same weights, transformers.BertModel.from_pretrained: "
                             f"{1e3 * statistics.median(times):.1f} ms (median of 3)")
            except ImportError as e:
                lines.append(f"transformers not available: {e}")
    return lines


# ----------------------------------------------------------------------------------------------


def speed_table(results: list[dict], anchors: list[str]) -> list[str]:
    """Markdown rows: medians, ratios of medians, and the min-max of the per-round ratios."""
    head = ["config", "bert_ref ms", "GFLOP/s", "floor ms", "/ floor"]
    for a in anchors:
        head += [f"{a} ms", f"/ {a} (pairs min-max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        t = r["times"]
        ours = statistics.median(t["bert_ref"])
        cells = [r["label"], f"{1e3 * ours:.1f}", f"{r['gflop'] / ours:.1f}",
                 f"{1e3 * statistics.median(t['floor']):.1f}",
                 f"{ours / statistics.median(t['floor']):.2f}"]
        for a in anchors:
            if a not in t:
                cells += ["-", "-"]
                continue
            pairs = [x / y for x, y in zip(t["bert_ref"], t[a], strict=True)]
            cells += [f"{1e3 * statistics.median(t[a]):.1f}",
                      f"**{ours / statistics.median(t[a]):.2f}** ({min(pairs):.2f}-{max(pairs):.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_docs(path: Path, generated: list[str]) -> None:
    """Replace the text between the bench markers of `path` with `generated` (temp file + rename)."""
    begin, end = "<!-- bench:begin (generated by tools/bench/bench.py --write-docs) -->", "<!-- bench:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: markers {begin!r} and {end!r} not found")
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(head + begin + "\n" + "\n".join(generated) + "\n" + end + tail)
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=0, help="timed rounds per configuration (default 5 base, 10 tiny)")
    ap.add_argument("--quick", action="store_true", help="only the three headline rows; no memory or load time")
    ap.add_argument("--only", nargs="*", help="only configurations whose label contains one of these")
    ap.add_argument("--baseline", help="also time the bert_ref package of this checkout (before/after)")
    ap.add_argument("--write-docs", action="store_true", help="write this run's tables into docs/performance.md")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--rss-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_worker:
        print(json.dumps(rss_worker(json.loads(args.rss_worker))))
        return

    start = time.perf_counter()
    try:
        import torch

        torch.set_num_threads(cores())
    except ImportError:
        pass
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    emit("Machine:")
    emit()
    emit("```")
    for line in machine():
        emit(line)
    emit("```")
    configs = CONFIGS[:HEADLINE] if args.quick else CONFIGS
    if args.only:
        configs = [c for c in configs if any(s in c[0] for s in args.only)]
    if args.quick:
        args.no_rss = args.no_load = True
    baseline = load_baseline(args.baseline) if args.baseline else None

    anchors = ["torch eager", "torch sdpa", "keras-hub jax"] + (["baseline"] if baseline else [])
    results, notes = [], []
    for label, arch, batch, seq, dtype, act in configs:
        r = bench_speed(label, arch, batch, seq, dtype, act, args, baseline)
        results.append(r)
        t = r["times"]
        print(f"  {label}: " + ", ".join(f"{k} {1e3 * statistics.median(v):.1f} ms" for k, v in t.items()), flush=True)
        notes += [f"{label}: {n}" for n in r["notes"]]
    rounds = sorted({len(r["times"]["bert_ref"]) for r in results})
    emit()
    emit(f"Forward pass (median of {'/'.join(map(str, rounds))} interleaved rounds after a warm-up; ratios are "
         "bert_ref / anchor, of the medians, and in brackets the min-max of the per-round ratios):")
    emit()
    for line in speed_table(results, anchors):
        emit(line)
    for n in notes:
        emit(f"note: {n}")

    if not args.no_rss:
        emit()
        emit("Resident memory (fresh process per configuration; preset loaded memory-mapped; MB):")
        emit()
        emit("| config | weights | copied | act | peak RSS | peak / (weights + 3 act) |")
        emit("|---|---|---|---|---|---|")
        for label, arch, batch, seq, dtype, act in configs:
            m = bench_rss(arch, batch, seq, dtype, act)
            ratio = m["total"] / (m["weights"] + 3 * m["act"])
            emit(f"| {label} | {m['weights'] / 1e6:.1f} | {m['copied'] / 1e6:.1f} | {m['act'] / 1e6:.1f} | "
                 f"{m['total'] / 1e6:.1f} | {ratio:.2f} |" + ("" if m["exact_peak"] else " (ru_maxrss)"))

    if not args.no_load:
        emit()
        emit("Load time (BERT-base shape, float32):")
        emit()
        for line in bench_load(args):
            emit(f"- {line.strip()}")
    emit()
    args_used = argv if argv is not None else sys.argv[1:]
    emit(f"Command: `python tools/bench/bench.py{' ' + ' '.join(args_used) if args_used else ''}`; "
         f"total bench time: {time.perf_counter() - start:.0f} s.")
    if args.write_docs:
        write_docs(ROOT / "docs" / "performance.md", out)
        print("wrote docs/performance.md")


if __name__ == "__main__":
    main()
