"""One precision table (`bert_ref.model.precision.TABLE`): every policy, the precision a port computed
that way is declared in, its report label and its unit roundoff, read by the policies, the oracle,
the report and the CLI alike."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bert_ref.model import precision
from bert_ref.model.precision import HALF_PRECISIONS, POLICIES, POLICY_NAMES, PRECISIONS, TABLE, UNIT_ROUNDOFF

PACKAGE = Path(precision.__file__).resolve().parents[1]


def test_each_row_builds_its_policy():
    for row in TABLE:
        if "bfloat16" in (row.variable, row.compute):
            pytest.importorskip("ml_dtypes")
        policy = precision.get_policy(row.policy)
        assert type(policy) is row.kind and policy.name == row.policy
        assert (policy.variable_dtype.name, policy.compute_dtype.name) == (row.variable, row.compute)
        # the math runs in float32 or float64 (half precision in float32)
        assert policy.work_dtype == (policy.compute_dtype if row.compute in ("float32", "float64") else np.float32)


def test_unit_roundoff_is_that_of_the_dtype_the_outputs_are_stored_in():
    for row in TABLE:
        if row.compute == "bfloat16":
            finfo = pytest.importorskip("ml_dtypes").finfo(row.compute)
        else:
            finfo = np.finfo(row.compute)
        assert row.unit_roundoff == float(finfo.eps) / 2, row


def test_rows_of_one_precision_agree_and_its_policy_measures_its_floor():
    for row in TABLE:
        floor = POLICIES[row.precision]  # the policy of the precision's name runs its floor
        assert floor.precision == row.precision
        assert (row.short, row.unit_roundoff) == (floor.short, floor.unit_roundoff), row
    assert POLICY_NAMES == tuple(row.policy for row in TABLE)
    assert set(PRECISIONS) == {row.precision for row in TABLE}
    assert UNIT_ROUNDOFF["float64"] == 2.0 ** -53 and UNIT_ROUNDOFF["tf32"] == 2.0 ** -24
    assert HALF_PRECISIONS == ("float16", "bfloat16")
    assert precision.short_name("bfloat16") == "bf16" and precision.short_name("custom") == "custom"


def test_no_second_copy_of_the_table_in_the_package():
    # The table's own literals (report labels, unit roundoffs, the policy -> precision pairs) appear
    # in bert_ref/model/precision.py only.
    literal = re.compile(r'"(f16|bf16|f32|f64)"|2\.0 \*\* -(8|11|24|53)\b|"mixed_b?float16":')
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "model/precision.py":
            continue
        found += [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
                  for i, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, "\n".join(found)
