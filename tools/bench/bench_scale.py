"""Benchmark dataset-scale runs (`bert-ref run --dataset`): scaling over Dask workers, scheduler
overhead per shard, and each worker's peak memory.

Run from the repository root with the `scale` extra installed:

    python tools/bench/bench_scale.py [--records 2000] [--shard-size 256] [--rounds 1] [--distributed] [--json FILE]
    python tools/bench/bench_scale.py --quick          # 400 records, shards of 64: checks the tool works (~1 minute)

The model is a float64 BERT-small shape (4 layers, hidden 512, 8 heads, intermediate 2048,
vocabulary 30522; keras-hub's random initialisation, seed 0), saved as a native preset in float64 so
that every worker memory-maps the weights instead of copying them. The dataset is `--records`
right-padded token-id rows with lengths drawn uniformly from 16..128 (seed 0), in one `.npz`.

Runs, one after the other, all in the float64 policy with the default batching:

* **sequential**: a plain loop in this process over the same shards (`bert_ref.scale.compute_outputs`,
  no Dask, nothing written), with every core for BLAS: the baseline;
* **1 worker** and **2 workers**: `run_dataset(..., scheduler="processes", threads=1)`, Dask's local
  process pool; with `--distributed` also a `distributed.LocalCluster` of 2 single-thread workers.

With `--rounds N` the three runs are repeated N times, interleaved, so that a machine busy with
other work slows each kind of run alike; the summary gives the per-round ratios and their median.
For each run it prints records/s end to end (process start, imports, preset load and writes included)
and in steady state (records / time from the first shard's start to the last one's end), and the
speed-up over 1 worker. *Scheduler overhead per shard* is the idle time between one shard's end and
the next shard's start on the same worker, as a share of the mean shard compute time. *Peak RSS per
worker* (from each task's `getrusage`) is set against the target: the weights' mapped bytes + 3 x
the largest activation of any batch (the larger of the feed-forward intermediate [b, L, 2048] and
the attention probabilities [b, 8, L, L], in float64); the shard's output buffers and the
interpreter's own RSS before the first shard are printed next to it.

Expected runtime of the default (2,000 records) on an idle 2-core AVX-512 machine: about 3 minutes
(about 4 with `--distributed`). The machine is printed in the header.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: the shared helpers
from _provenance import cpu_name  # tools/ is on sys.path for a script run from it

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bert_ref import BertBackbone, __version__  # noqa: E402
from bert_ref.scale.dataset import length_batches, open_dataset  # noqa: E402
from bert_ref.scale.options import DEFAULT_BATCH_TOKENS, DEFAULT_SHARD_SIZE
from bert_ref.scale.run import job_for, run_dataset
from bert_ref.scale.shards import ScaleJob, compute_outputs, cores, weights_sha256

SMALL = dict(vocabulary_size=30522, num_layers=4, num_heads=8, hidden_dim=512, intermediate_dim=2048,
             max_sequence_length=512)
MiB = 1 << 20


def machine() -> str:
    cpu = cpu_name()
    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            blas = f"{info[0].get('internal_api')} {info[0].get('version')} ({info[0].get('architecture')})"
    except ImportError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{cpu}, {cores()} cores; Python {platform.python_version()}, NumPy {np.__version__}, BLAS {blas}; "
            f"bert_ref {__version__}; load average before the runs {load[0]:.2f}")


def make_data(root: Path, records: int) -> tuple[Path, Path]:
    preset = root / "bert_small_f64"
    BertBackbone(**SMALL, seed=0, dtype="float64").save_to_preset(preset)
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 129, records)
    ids = np.zeros((records, 128), np.int32)
    mask = np.zeros((records, 128), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1000, SMALL["vocabulary_size"], n)
        ids[i, 0], ids[i, n - 1] = 101, 102
        mask[i, :n] = 1
    data = root / "data.npz"
    np.savez(data, token_ids=ids, padding_mask=mask)
    return preset, data


def sequential(preset: Path, data: Path, shard_size: int, batch_tokens: int) -> dict:
    ds = open_dataset(data)
    job = ScaleJob(str(preset.resolve()), weights_sha256(preset), "float64", ("sequence_output", "pooled_output"), ds,
                   SMALL["max_sequence_length"], False, batch_tokens, None, None)
    compute_outputs(job, 0, 1)  # load the preset (memory-mapped) outside the timing
    t = time.perf_counter()
    compute = 0.0
    for a, b in ds.shards(shard_size):
        _, _, timings = compute_outputs(job_for(job, a, b), a, b)
        compute += timings["compute_s"]
    wall = time.perf_counter() - t
    return {"wall_s": wall, "records_per_s": ds.num_records / wall, "steady_records_per_s": ds.num_records / wall,
            "compute_s": compute}


def summarize(manifest: dict, wall: float) -> dict:
    entries = [e for e in manifest["shards"] if e]
    n = sum(e["records"][1] - e["records"][0] for e in entries)
    first = min(e["started"] for e in entries)
    last = max(e["started"] + e["timings"]["task_s"] for e in entries)
    by_worker: dict[str, list] = {}
    for e in entries:
        by_worker.setdefault(e["worker"], []).append(e)
    gaps = []
    for shards in by_worker.values():
        shards.sort(key=lambda e: e["started"])
        for x, y in zip(shards, shards[1:], strict=False):
            gaps.append(y["started"] - (x["started"] + x["timings"]["task_s"]))
    compute = [e["timings"]["compute_s"] for e in entries]
    other = [e["timings"]["task_s"] - e["timings"]["compute_s"] - e["timings"]["load_s"] for e in entries]
    return {
        "wall_s": wall, "records_per_s": n / wall, "steady_records_per_s": n / (last - first),
        "startup_s": first - manifest["_t0"], "workers_seen": len(by_worker),
        "mean_compute_s": statistics.mean(compute),
        "overhead_per_shard_s": statistics.mean(gaps) if gaps else None,
        "in_task_read_write_s": statistics.mean(other),
        "peak_rss_mib": {w: max(e["peak_rss_bytes"] or 0 for e in s) / MiB for w, s in by_worker.items()},
        "rss_before_first_shard_mib": {w: min(e["rss_start_bytes"] or 0 for e in s) / MiB
                                       for w, s in by_worker.items()},
    }


def dask_run(preset: Path, data: Path, out: Path, shard_size: int, batch_tokens: int, **kw) -> dict:
    t0 = time.time()
    m = run_dataset(str(preset), data, out, dtype="float64", shard_size=shard_size, batch_tokens=batch_tokens,
                    threads=1, progress=False, **kw)
    wall = time.time() - t0
    m["_t0"] = t0
    return summarize(m, wall)


def memory_target(preset: Path, data: Path, shard_size: int, batch_tokens: int) -> dict:
    ds = open_dataset(data)
    mask = np.load(data)["padding_mask"]
    lengths = mask.sum(1)
    largest, out_buf = 0, 0
    h, f, hid = SMALL["num_heads"], SMALL["intermediate_dim"], SMALL["hidden_dim"]
    for a, b in ds.shards(shard_size):
        sl = lengths[a:b]
        out_buf = max(out_buf, (b - a) * int(sl.max()) * hid * 8 + (b - a) * hid * 8)
        for rows in length_batches(sl, batch_tokens):
            bsz, width = len(rows), int(sl[rows].max())
            largest = max(largest, bsz * width * f * 8, bsz * h * width * width * 8)
    weights = (preset / "model.safetensors").stat().st_size
    return {"weights_mib": weights / MiB, "largest_activation_mib": largest / MiB,
            "target_mib": (weights + 3 * largest) / MiB, "shard_outputs_mib": out_buf / MiB}


def report_round(i: int, runs: dict, mem: dict) -> None:
    one = runs["1 worker x 1 thread (processes)"]
    print(f"\nround {i + 1}")
    print(f"{'run':<38} {'wall s':>7} {'rec/s':>7} {'steady rec/s':>13} {'x 1 worker (steady)':>20}")
    for name, r in runs.items():
        print(f"{name:<38} {r['wall_s']:7.1f} {r['records_per_s']:7.1f} {r['steady_records_per_s']:13.1f} "
              f"{r['steady_records_per_s'] / one['steady_records_per_s']:20.2f}")
    for name, r in runs.items():
        if "overhead_per_shard_s" not in r:
            continue
        ov = r["overhead_per_shard_s"]
        print(f"  {name}: compute {r['mean_compute_s']:.2f} s per shard; scheduler gap "
              + ("-" if ov is None else f"{ov * 1e3:.1f} ms = {100 * ov / r['mean_compute_s']:.2f}% of compute")
              + f"; read + write inside the task {r['in_task_read_write_s'] * 1e3:.1f} ms; "
                f"start-up before the first shard {r['startup_s']:.1f} s")
        for w, peak in r["peak_rss_mib"].items():
            base = r["rss_before_first_shard_mib"][w]
            print(f"    {w}: peak RSS {peak:.0f} MiB; {base:.0f} MiB before its first shard (interpreter, NumPy, "
                  f"Dask); peak - that = {peak - base:.0f} MiB = {(peak - base) / mem['target_mib']:.2f} x target")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="400 records in shards of 64: check that the tool works")
    p.add_argument("--shard-size", type=int, default=None, help=f"default {DEFAULT_SHARD_SIZE} (64 with --quick)")
    p.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    p.add_argument("--distributed", action="store_true", help="also a distributed.LocalCluster of 2 workers")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all the runs (default 1)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    records = 400 if args.quick else args.records
    if args.shard_size is None:
        args.shard_size = 64 if args.quick else DEFAULT_SHARD_SIZE
    print(f"machine: {machine()}")
    print(f"model: float64 BERT-small (4 layers, hidden 512, 8 heads, intermediate 2048), random weights; "
          f"{records} records of 16..128 tokens; shard size {args.shard_size}, batch tokens {args.batch_tokens}")
    results: dict = {"machine": machine(), "records": records, "shard_size": args.shard_size}
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        preset, data = make_data(root, records)
        results["memory"] = mem = memory_target(preset, data, args.shard_size, args.batch_tokens)
        print(f"memory target: weights {mem['weights_mib']:.0f} MiB (mapped) + 3 x largest activation "
              f"{mem['largest_activation_mib']:.0f} MiB = {mem['target_mib']:.0f} MiB; shard outputs up to "
              f"{mem['shard_outputs_mib']:.0f} MiB (written to disk as computed)")
        rounds = []
        for i in range(args.rounds):  # interleaved rounds: a busy machine slows every kind of run alike
            runs = {}
            runs["sequential (1 process, all cores)"] = sequential(preset, data, args.shard_size, args.batch_tokens)
            runs["1 worker x 1 thread (processes)"] = dask_run(preset, data, root / f"w1-{i}", args.shard_size,
                                                               args.batch_tokens, scheduler="processes", workers=1)
            runs["2 workers x 1 thread (processes)"] = dask_run(preset, data, root / f"w2-{i}", args.shard_size,
                                                                args.batch_tokens, scheduler="processes", workers=2)
            if args.distributed:
                from distributed import LocalCluster

                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=50) as cluster:
                    runs["2 workers x 1 thread (LocalCluster)"] = dask_run(
                        preset, data, root / f"d2-{i}", args.shard_size, args.batch_tokens,
                        scheduler=cluster.scheduler_address)
            rounds.append(runs)
            report_round(i, runs, mem)
    results["rounds"] = rounds
    one_name, two_name = "1 worker x 1 thread (processes)", "2 workers x 1 thread (processes)"
    ratios = [r[two_name]["steady_records_per_s"] / r[one_name]["steady_records_per_s"] for r in rounds]
    per_core = statistics.median(r[one_name]["steady_records_per_s"] for r in rounds)
    overhead = [r[n]["overhead_per_shard_s"] / r[n]["mean_compute_s"] for r in rounds for n in r
                if r[n].get("overhead_per_shard_s") is not None]
    peaks = [(peak - r[n]["rss_before_first_shard_mib"][w]) / mem["target_mib"]
             for r in rounds for n in r for w, peak in r[n].get("peak_rss_mib", {}).items()]
    print(f"\nover {len(rounds)} round(s):")
    print(f"  2 workers / 1 worker (steady state): {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}x (target >= 1.7x)")
    if overhead:
        print(f"  scheduler gap per shard: {100 * min(overhead):.2f}-{100 * max(overhead):.2f}% of shard compute "
              "(target < 2%)")
    print(f"  peak RSS net of the interpreter: {min(peaks):.2f}-{max(peaks):.2f} x target")
    print(f"  paper extrapolation: {per_core:.1f} records/s per core (median) -> x cores (e.g. 64 cores: "
          f"{per_core * 64:.0f} records/s, 10^6 records in {1e6 / (per_core * 64) / 60:.0f} min), "
          "if the shared storage keeps up")
    print(f"total bench time {time.time() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
