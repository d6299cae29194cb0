"""The code a learner reads is the code that runs, and stays within its target: the float32 forward
with `plain=True` runs at most 150 code lines of ops.py and encoder.py, with no concurrency code in
them and no function of the fast kernels or their runtime (measured by tools/bench/count_lines.py,
which runs the forward under a profiler and counts the functions it enters)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


COUNT_LINES = ROOT / "tools" / "bench" / "count_lines.py"


@pytest.mark.skipif(not COUNT_LINES.exists(), reason="tools/ is not in this copy (an sdist)")
def test_the_plain_forward_runs_at_most_150_code_lines_without_concurrency():
    out = subprocess.run([sys.executable, str(COUNT_LINES)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    total = int(out.stdout.split("total:")[1].split()[0])
    assert 50 < total <= 150, out.stdout  # > 50: the count found the code at all
    assert "concurrency code in them: none" in out.stdout
    assert "kernels or runtime run: none" in out.stdout
