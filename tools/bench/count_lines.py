"""Count the code lines of the float32 forward a learner reads, measured on the code that runs:
`forward(..., plain=True)` is run here under a tracer (a small random model, both GELUs, traced and
untraced, with hidden states and attention probabilities), and every function of `bert_ref` it
enters is counted.

- **The forward**: the functions entered in `bert_ref/ops.py` (plus that module's own top-level
  code: its constants and tables) and in `bert_ref/encoder.py` — `forward` and the composition it
  runs. This is the number held to the target (at most 150).
- **Also run, not in the target**: the input checks and the output casts of `encoder.py`, and the
  dtype policy's hooks in `bert_ref/model/precision.py` (the identity for float32); listed with
  their counts.
- **Fast machinery**: any function of `bert_ref/model/kernels.py` or `bert_ref/model/runtime.py`
  entered (there must be none), and any concurrency or `del` in the counted lines.

A code line is a physical line holding code: blank lines, comment-only lines and docstrings are not
counted (a statement spread over several lines counts each line).

    python tools/bench/count_lines.py
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PACKAGE = ROOT / "bert_ref"
CONCURRENCY = re.compile(r"\b(thread|Thread|threading|concurrent|Executor|Pool|Lock|fork|multiprocessing|del)\b")
TARGET = 150
#: Functions of encoder.py that check the inputs and cast the outputs: they run, but are not the model.
CHECKS = {"validate_inputs", "_as_int_array", "_first_bad", "_params", "_outputs"}
FAST = ("model/kernels.py", "model/runtime.py")


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """Line numbers holding a token other than a comment, newline or docstring."""
    docstrings = _docstring_lines(ast.parse(source))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstrings)
    return lines


def _functions(tree: ast.Module) -> dict[int, tuple[str, int, int]]:
    """First line of each function's code object -> (qualified name, first line with decorators, last line)."""
    found: dict[int, tuple[str, int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found[start] = (name, start, child.end_lineno or child.lineno)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def entered_functions(run: Any) -> dict[str, set[int]]:
    """{file relative to bert_ref/: first lines of the functions entered} while `run()` runs."""
    entered: dict[str, set[int]] = {}

    def tracer(frame: FrameType, event: str, arg: object) -> None:
        code: CodeType = frame.f_code
        path = Path(code.co_filename)
        if event == "call" and path.is_relative_to(PACKAGE) and code.co_name not in ("<module>", "<genexpr>"):
            entered.setdefault(path.relative_to(PACKAGE).as_posix(), set()).add(code.co_firstlineno)

    sys.setprofile(tracer)  # calls only (no per-line events): cheap enough for a real forward
    try:
        run()
    finally:
        sys.setprofile(None)
    return entered


def plain_forwards() -> list[Any]:
    """Calls of `forward(..., plain=True)` on prepared weights: both GELUs, untraced and traced."""
    import numpy as np

    from bert_ref import BertBackbone, forward

    calls = []
    inputs = {"token_ids": np.array([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]]),
              "padding_mask": np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])}
    for activation in ("gelu", "gelu_approximate"):
        model = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                             max_sequence_length=8, activation=activation, seed=0)
        prepared, config = model.prepared_weights(), model.config
        for trace in (None, True):
            calls.append(lambda p=prepared, c=config, t=trace: forward(
                p, c, inputs, plain=True, trace=t, output_hidden_states=True, output_attentions=True))
    return calls


def main() -> int:
    calls = plain_forwards()
    for call in calls:  # once untraced: imports and first-call setup are not what a forward runs
        call()
    entered = entered_functions(lambda: [call() for call in calls])
    counted: dict[str, set[int]] = {}
    also: list[str] = []
    fast: list[str] = []
    spans_run: dict[str, list[tuple[str, int, int]]] = {}
    for rel, firsts in sorted(entered.items()):
        source = (PACKAGE / rel).read_text()
        tree = ast.parse(source)
        code, functions = code_lines(source), _functions(tree)
        spans = {functions[first] for first in firsts if first in functions}
        # a function whose nested function runs (a decorator's wrapper, a closure) is run code too
        spans |= {f for f in functions.values() for s in list(spans) if f[1] <= s[1] and s[2] <= f[2]}
        outer = [s for s in spans if not any(o != s and o[1] <= s[1] and s[2] <= o[2] for o in spans)]
        spans_run[rel] = outer
        if rel in FAST:
            fast += [f"{rel}: {name}" for name, _, _ in sorted(outer)]
            continue
        for name, first, last in sorted(outer, key=lambda s: s[1]):
            lines = {n for n in code if first <= n <= last}
            if rel in ("ops.py", "encoder.py") and name not in CHECKS:
                counted.setdefault(rel, set()).update(lines)
            else:
                also.append(f"  {rel} {name}: {len(lines)}")
        if rel == "ops.py":  # the module's own top-level code: its constants and tables
            inside = {n for _, first, last in functions.values() for n in range(first, last + 1)}
            counted.setdefault(rel, set()).update(n for n in code if n not in inside)
    run_ops = {name for name, _, _ in spans_run.get("ops.py", [])}
    never = [name for name, _, _ in _functions(ast.parse((PACKAGE / "ops.py").read_text())).values()
             if "." not in name and name not in run_ops]
    total = sum(len(v) for v in counted.values())
    for rel in ("ops.py", "encoder.py"):
        print(f"bert_ref/{rel}: {len(counted.get(rel, ()))} code lines run")
    print(f"total:                 {total} code lines (target: at most {TARGET})")
    if never:
        print("ops.py functions the forward does not run (not counted):", ", ".join(never))
    print("also run, not in the target (input checks, output casts, the policy's hooks):")
    print("\n".join(also) or "  none")
    hits = []
    for rel, lines in counted.items():
        text = (PACKAGE / rel).read_text().splitlines()
        hits += [f"{rel}:{n}: {text[n - 1].strip()}" for n in sorted(lines) if CONCURRENCY.search(text[n - 1])]
    for hit in hits:
        print("concurrency/del at", hit)
    print("concurrency code in them:", "yes" if hits else "none")
    for f in fast:
        print("fast machinery run:", f)
    print("kernels or runtime run:", "yes" if fast else "none")
    return 0 if total <= TARGET and not hits and not fast else 1


if __name__ == "__main__":
    sys.exit(main())
