"""Count the code lines a learner reads for the whole float32 forward: `bert_ref/ops.py` (all of
it) plus `bert_ref.encoder.forward` (with the steps nested in it).

A code line is a physical line holding code: blank lines, comment-only lines and docstrings are
not counted (a statement spread over several lines counts each line). Also reports whether any
concurrency or in-place machinery appears in them.

    python tools/bench/count_lines.py
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = re.compile(r"\b(thread|Thread|threading|concurrent|Executor|Pool|Lock|fork|multiprocessing|del)\b")


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str, first: int = 1, last: int | None = None) -> list[int]:
    """Line numbers in [first, last] holding a token other than a comment, newline or docstring."""
    docstrings = _docstring_lines(ast.parse(source))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in skip:
            continue
        for line in range(tok.start[0], tok.end[0] + 1):
            if line not in docstrings and first <= line <= (last or line):
                lines.add(line)
    return sorted(lines)


def function_span(source: str, name: str) -> tuple[int, int]:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return start, node.end_lineno or node.lineno
    raise LookupError(name)


def main() -> int:
    ops_src = (ROOT / "bert_ref" / "ops.py").read_text()
    enc_src = (ROOT / "bert_ref" / "encoder.py").read_text()
    ops_lines = code_lines(ops_src)
    first, last = function_span(enc_src, "forward")
    fwd_lines = code_lines(enc_src, first, last)
    total = len(ops_lines) + len(fwd_lines)
    print(f"bert_ref/ops.py (whole module):  {len(ops_lines)} code lines")
    print(f"bert_ref/encoder.py forward():   {len(fwd_lines)} code lines (lines {first}-{last})")
    print(f"total:                           {total} code lines (target: at most 150)")
    ops_text, enc_text = ops_src.splitlines(), enc_src.splitlines()
    hits = [(f"ops.py:{n}", ops_text[n - 1]) for n in ops_lines if CONCURRENCY.search(ops_text[n - 1])]
    hits += [(f"encoder.py:{n}", enc_text[n - 1]) for n in fwd_lines if CONCURRENCY.search(enc_text[n - 1])]
    for where, line in hits:
        print(f"concurrency/del at {where}: {line.strip()}")
    print("concurrency code in them:", "yes" if hits else "none")
    return 0 if total <= 150 and not hits else 1


if __name__ == "__main__":
    sys.exit(main())
