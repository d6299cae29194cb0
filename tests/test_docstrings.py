"""The runnable `Examples:` in the public docstrings run and print what they claim."""

import doctest

import pytest

import bert_ref
import bert_ref.backbone
import bert_ref.model.precision
import bert_ref.oracle.testing


@pytest.mark.parametrize("module", [bert_ref, bert_ref.backbone, bert_ref.oracle.testing, bert_ref.model.precision],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0
