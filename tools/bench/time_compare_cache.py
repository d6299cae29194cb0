"""Time `bert-ref compare` with a cold and a warm oracle cache (bert_ref.oracle.cache).

    python tools/bench/time_compare_cache.py [--repeats N] [--skip-base] [--skip-minilm] [--code DIR ...]
        [--precision P]

Two set-ups: BERT-base-shaped random weights (keras-hub's initialisation, seed 0; a native preset
written to a temporary directory) on 8 x 128 random token ids, and the real all-MiniLM-L6-v2 on
the 4 x 15 inputs of golden/minilm. For each, the candidate is our own float32 run with hidden
states (`bert-ref run --hidden-states`) and a second candidate is that run plus noise. Each
repetition times, as separate processes (wall clock, model loading included):

    no cache      compare --no-cache                         (what every compare cost before)
    cold          compare with an empty cache directory     (runs, then stores)
    warm          compare of the other candidate, same inputs (reads the stored runs)

and prints the median of each and warm's speed-up over cold. Timings on a shared machine are
noisy: the three are interleaved in each repetition, and the spread is printed, with the CPU time
(user + system) of each command beside its wall clock: on a machine busy with other work the CPU
time is the steadier figure. `--code DIR ...` times other checkouts of bert_ref too (the code
before a change, say), interleaved with this one in every repetition, on the same inputs and
candidates. With `--precision P` every compare is `--precision P` (the verdict against the float64
truth, next to the ensemble of our runs in P: bert_ref.oracle.ensemble), instead of the absolute
float32 check.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

from _provenance import cpu_name  # noqa: E402


def machine() -> str:
    """The machine line printed above the timings."""
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"machine: {cpu_name()}, {cores} cores; Python {platform.python_version()}, NumPy {np.__version__}; "
            f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r} (when set, every command "
            f"compiles bert_ref from source); load average before the runs {load:.2f}")


def _cli(*args, env) -> tuple[float, float]:
    """(wall clock, CPU time of the command) in seconds. The command runs in the bert_ref of
    `env["PYTHONPATH"]`, started from an empty directory: `python -m` puts its working directory
    first on the import path, so started from a checkout it would import that checkout's bert_ref
    whatever PYTHONPATH says (the tool did so for every `--code` before this was fixed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bert_ref", *map(str, args)], env=env, capture_output=True, text=True,
                       cwd=_EMPTY)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        raise SystemExit(f"bert-ref {' '.join(map(str, args))} failed: {r.stderr}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


_EMPTY = tempfile.mkdtemp(prefix="bert_ref_bench_cwd_")  # the commands' working directory


def imported(root: Path) -> str:
    """Where the commands timed for the checkout `root` import bert_ref from (printed, to be sure)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", "import bert_ref; print(bert_ref.__file__)"], env=env,
                       capture_output=True, text=True, cwd=_EMPTY, check=True)
    return r.stdout.strip()


def _setup(work: Path, preset, inputs: dict, env) -> tuple[Path, Path]:
    np.savez(work / "in.npz", **inputs)
    _cli("run", preset, "-i", work / "in.npz", "-o", work / "cand.npz", "--hidden-states", env=env)
    d = np.load(work / "cand.npz")
    rng = np.random.default_rng(1)
    np.savez(work / "cand2.npz", **{k: d[k] + rng.normal(0, 1e-7, d[k].shape).astype(np.float32) for k in d.files})
    return work / "cand.npz", work / "cand2.npz"


def measure(name: str, preset, inputs: dict, repeats: int, code: list[Path],
            precision: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(ROOT), BERT_REF_OFFLINE="1")
        c1, c2 = _setup(work, preset, inputs, env)
        kinds = ("no cache", "cold", "warm")
        times: dict[tuple[Path, str], list[tuple[float, float]]] = {(r, k): [] for r in code for k in kinds}
        for i in range(repeats):
            for root in code:
                cache = work / f"cache{i}"
                env_c = dict(env, PYTHONPATH=str(root), BERT_REF_ORACLE_CACHE=str(cache))
                asked = ("--precision", precision) if precision else ()
                base = ("compare", preset, "-i", work / "in.npz", *asked, "-c")
                times[root, "no cache"].append(_cli(*base, c1, "--no-cache", env=env_c))
                times[root, "cold"].append(_cli(*base, c1, env=env_c))
                times[root, "warm"].append(_cli(*base, c2, env=env_c))
                shutil.rmtree(cache, ignore_errors=True)
        b, s = inputs["token_ids"].shape
        for root in code:
            wall = {k: [t[0] for t in times[root, k]] for k in kinds}
            cpu = {k: [t[1] for t in times[root, k]] for k in kinds}
            med = {k: statistics.median(v) for k, v in wall.items()}
            mode = f"--precision {precision}" if precision else "absolute float32 check"
            which = f", code {root}" if len(code) > 1 else ""
            print(f"{name}, {b} x {s}, {mode}, {repeats} repetitions{which}: "
                  + ", ".join(f"{k} {med[k]:.2f} s ({min(wall[k]):.2f}-{max(wall[k]):.2f}; CPU "
                              f"{statistics.median(cpu[k]):.2f} s)" for k in kinds)
                  + f"; warm is {med['cold'] / med['warm']:.1f}x faster than cold, "
                  f"{med['no cache'] / med['warm']:.1f}x faster than no cache")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-base", action="store_true")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--code", nargs="+", type=Path, default=[], metavar="DIR",
                   help="other bert_ref checkouts to time, interleaved with this one")
    p.add_argument("--precision", default=None, help="time compares with --precision P (default: the absolute check)")
    a = p.parse_args(argv)
    code = [ROOT, *(c.resolve() for c in a.code)]
    print(machine(), flush=True)
    for root in code:
        where = imported(root)
        print(f"code {root}: bert_ref imported from {where}", flush=True)
        if not Path(where).resolve().is_relative_to(root):
            raise SystemExit(f"{root}: its commands would import another bert_ref ({where})")
    if not a.skip_minilm:
        d = np.load(ROOT / "golden" / "minilm" / "outputs.npz")
        inputs = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("inputs/")}
        minilm = minilm_dir()
        measure("all-MiniLM-L6-v2", minilm, inputs, a.repeats, code, a.precision)
    if not a.skip_base:
        from bert_ref import BertBackbone
        from bert_ref.model.presets import preset_config

        with tempfile.TemporaryDirectory() as tmp:
            preset = Path(tmp) / "bert_base_random"
            BertBackbone(**preset_config("bert_base_en_uncased").to_dict(), seed=0).save_to_preset(preset)
            rng = np.random.default_rng(0)
            inputs = {"token_ids": rng.integers(1000, 30000, (8, 128)), "padding_mask": np.ones((8, 128), np.int64)}
            inputs["padding_mask"][:, 100:] = 0
            measure("BERT-base shape, random weights", preset, inputs, a.repeats, code, a.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
