"""The code a learner reads stays within the README's target: ops.py plus forward in at most 150
code lines, with no concurrency code in them (counted by tools/bench/count_lines.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


COUNT_LINES = ROOT / "tools" / "bench" / "count_lines.py"


@pytest.mark.skipif(not COUNT_LINES.exists(), reason="tools/ is not in this copy (an sdist)")
def test_ops_and_forward_fit_in_150_code_lines_without_concurrency():
    out = subprocess.run([sys.executable, str(COUNT_LINES)], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    total = int(out.stdout.split("total:")[1].split()[0])
    assert 50 < total <= 150, out.stdout  # > 50: the count found the code at all
    assert "concurrency code in them: none" in out.stdout
