"""docs/exercises.md: every check passes with the solutions and fails without them.

"Without them" is three things: the unsolved stubs of bert_ref/learn/workbook.py (each raises
NotImplementedError), and for each exercise a plausible wrong answer, a learner's likely mistake
(the scale left in, pooling over the padding, the wrong head...), which the check must catch.
The checks themselves run the real all-MiniLM-L6-v2 weights against the encoder's trace.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from bert_ref.learn import exercises, solutions, workbook

from needs import minilm_model_dir


@pytest.fixture(scope="module", autouse=True)
def _minilm() -> None:
    minilm_model_dir()


def _with(**changes: object) -> SimpleNamespace:
    """The solutions with some answers replaced."""
    names = {n: getattr(solutions, n) for n in dir(solutions) if not n.startswith("_")}
    return SimpleNamespace(**{**names, **changes})


def _no_padding_mask(sequence_output, padding_mask):
    mean = sequence_output.mean(axis=1)  # the padded positions counted too
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def _not_normalised(sequence_output, padding_mask):
    m = padding_mask[..., None]
    return (sequence_output * m).sum(axis=1) / m.sum(axis=1)


WRONG = {
    1: _with(attention_probs=lambda q, k, mask, scaled=True: solutions.attention_probs(q, k, mask, True)),
    2: _with(pre_ln_layer=solutions.post_ln_layer),
    3: _with(NEXT_TOKEN_HEAD=(0, 2)),
    4: _with(mean_pool=_no_padding_mask),
    5: _with(unmasked_softmax=solutions.masked_softmax),
    6: _with(gelu_exact=solutions.gelu_tanh),
    7: _with(cls_self_weight=lambda probs: np.stack([p[:, 0, 1] for p in probs])),
}
MORE_WRONG = [
    (1, _with(attention_entropy=lambda p: -(p * np.log2(np.where(p > 0, p, 1.0))).sum(-1))),  # bits, not nats
    (2, _with(post_ln_layer=solutions.pre_ln_layer)),
    (3, _with(positional_score=lambda probs, offset: solutions.positional_score(probs, -offset))),
    (4, _with(mean_pool=_not_normalised)),
    (5, _with(masked_softmax=solutions.unmasked_softmax)),
    (6, _with(gelu_tanh=solutions.gelu_exact)),
]


def test_there_are_at_least_six_exercises_and_the_stubs_name_every_function():
    assert len(exercises.EXERCISES) >= 6
    for ex in exercises.EXERCISES.values():
        for name in ex.functions:
            assert hasattr(workbook, name) and hasattr(solutions, name), name


@pytest.mark.parametrize("number", sorted(exercises.EXERCISES))
def test_check_passes_with_the_solution(number):
    lines: list[str] = []
    assert exercises.run_check(number, solutions, lines.append), "\n".join(lines)
    assert lines[-1].strip() == "PASSED"


@pytest.mark.parametrize("number", sorted(exercises.EXERCISES))
def test_check_fails_with_the_unsolved_stubs(number):
    lines: list[str] = []
    assert not exercises.run_check(number, workbook, lines.append)
    assert "not written yet" in lines[-1] or "not set yet" in lines[-1], lines[-1]


@pytest.mark.parametrize("number, answers", [(n, w) for n, w in WRONG.items()] + MORE_WRONG,
                         ids=[f"ex{n}-wrong" for n in WRONG] + [f"ex{n}-wrong-too" for n, _ in MORE_WRONG])
def test_check_fails_with_a_wrong_answer(number, answers):
    lines: list[str] = []
    assert not exercises.run_check(number, answers, lines.append), "\n".join(lines)
    assert "NOT YET" in lines[-1]


def test_the_learner_workflow_on_the_command_line(tmp_path):
    book = tmp_path / "bert_workbook.py"
    run = [sys.executable, "-m", "bert_ref.learn.exercises"]
    r = subprocess.run([*run, "--new", str(book)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and book.read_text() == open(workbook.__file__).read(), r.stderr
    r = subprocess.run([*run, "--new", str(book)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not overwriting" in r.stderr  # never clobbers the learner's work
    r = subprocess.run([*run, "7"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and "NOT YET: cls_self_weight() is not written yet" in r.stdout, r.stdout + r.stderr
    with open(book, "a") as f:  # the learner solves exercise 7
        f.write("\n\ndef cls_self_weight(attention_probs):\n"
                "    return np.stack([p[:, 0, 0] for p in attention_probs])\n")
    r = subprocess.run([*run, "7"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([*run, "9"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expected an exercise number in 1..7" in r.stderr
