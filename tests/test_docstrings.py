"""The runnable `Examples:` in the public docstrings run and print what they claim."""

import doctest

import pytest

import bert_ref
import bert_ref.backbone
import bert_ref.precision
import bert_ref.testing


@pytest.mark.parametrize("module", [bert_ref, bert_ref.backbone, bert_ref.testing, bert_ref.precision],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0
