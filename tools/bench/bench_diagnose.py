"""How long `compare --diagnose` takes on BERT-base 8 x 128 (a benchmark, not a test).

    python tools/bench/bench_diagnose.py [--repeat 2] [--mistake activation=gelu_approximate]

A BERT-base-shaped model (12 layers, hidden 768, keras-hub's random initialisation, exact GELU),
8 x 128 inputs (rows of lengths 128 down to 72, sentence pairs), and a float32 "port": our own
forward with one mistake of the catalogue applied (`bert_ref.oracle.variants`), all layer outputs
written. Timed, as `bert-ref compare --diagnose` runs them (the oracle cache on, in a temporary
directory, empty at the start): the verdict (`compare_to_truth`), then `diagnose` with the layer
outputs and that verdict (and with `--final`, from the final outputs only); each `--repeat` times,
the best kept. The load average is printed: on a shared machine the times move with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from _provenance import cpu_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from bert_ref import BertBackbone
    from bert_ref.oracle.diagnose import diagnose
    from bert_ref.oracle.keys import flatten_outputs
    from bert_ref.oracle.run import compare_to_truth
    from bert_ref.oracle.variants import catalogue, run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--mistake", default="activation=gelu_approximate", help="a catalogue id")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--final", action="store_true", help="also time the diagnosis from the final outputs only "
                   "(the whole network per mistake: minutes)")
    a = p.parse_args(argv)
    model = BertBackbone(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
                         activation="gelu", seed=0)
    rng = np.random.default_rng(0)
    b, s = a.batch, a.length
    mask = np.arange(s)[None, :] < (s - 8 * np.arange(b))[:, None]
    segments = (np.arange(s)[None, :] >= (s // 2)).astype(np.int64) * mask
    inputs = {"token_ids": rng.integers(1000, 30000, (b, s)), "segment_ids": segments, "padding_mask": mask}
    hyp = {h.id: h for h in catalogue(model.config, inputs)}[a.mistake]
    config, weights, port_inputs, steps = hyp.apply(model.config, dict(model.weights), inputs)
    port = flatten_outputs(run(weights, config, port_inputs, dtype="float32", steps=steps))
    final = {k: port[k] for k in ("sequence_output", "pooled_output")}
    times: dict[str, float] = {}
    result = None
    verdicts: list = []  # the verdict of each round, which its diagnosis takes (as the CLI does)
    for _ in range(a.repeat):
        os.environ["BERT_REF_ORACLE_CACHE"] = tempfile.mkdtemp(prefix="bench_diagnose_")  # cold
        runs = [("verdict", lambda: verdicts.append(compare_to_truth(model, inputs, port, precision="float32",
                                                                    cache=True))),
                ("diagnose, layer outputs", lambda: diagnose(model, inputs, port, precision="float32", cache=True,
                                                             report=verdicts[-1]))]
        if a.final:
            runs.append(("diagnose, final outputs",
                         lambda: diagnose(model, inputs, final, precision="float32", cache=True)))
        for name, fn in runs:
            t0 = time.perf_counter()
            out = fn()
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
            print(f"  {name:<26} {time.perf_counter() - t0:6.1f} s", flush=True)
            if name == "diagnose, layer outputs":
                result = out
    print(f"BERT-base {b} x {s}, float32 port with {a.mistake}; {cpu_name()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; best of {a.repeat}")
    for name, t in times.items():
        print(f"  {name:<26} {t:6.1f} s")
    if result is not None:
        print(result.format(3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
