"""One output-key grammar (`bert_ref.oracle.keys.parse_key`): every part of the package that names,
orders, bounds or reads an output key goes through it, so they all agree on what a key is."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bert_ref.encoder import TRACE_EMBEDDINGS, TRACE_LAYER
from bert_ref.io.arrays import ArrayFileError, write_arrays
from bert_ref.model.config import BertConfig
from bert_ref.oracle import keys
from bert_ref.oracle.candidates import read_candidate
from bert_ref.oracle.keys import canonical_key, parse_key, placement, try_parse_key
from bert_ref.oracle.run import check_candidate, expected_shapes
from bert_ref.oracle.tolerances import TOLERANCE_KINDS, parse_tolerance

PACKAGE = Path(keys.__file__).resolve().parents[1]

GOOD = ["sequence_output", "pooled_output", "hidden_states.0", "hidden_states.12", "attention_probs.3",
        *TRACE_EMBEDDINGS, *(f"transformer_layer_7/{t}" for t in TRACE_LAYER), "transformer_layer_10/query"]
# Leading zeros, signs, spaces, missing indices, unknown steps, aliases (which are not our keys)
BAD = ["hidden_states.01", "hidden_states.+1", "hidden_states.-1", "hidden_states", "hidden_states.", " pooled_output",
       "attention_probs.1.2", "transformer_layer_01/query", "transformer_layer_1/querry", "transformer_layer_1/",
       "embeddings/foo", "last_hidden_state", "attentions.0", "sequence_output/", "Sequence_output"]


@pytest.mark.parametrize("key", GOOD)
def test_every_output_key_parses_and_is_accepted_everywhere(key, tmp_path):
    parsed = parse_key(key)
    assert parsed.key == key and keys.is_output_key(key) and canonical_key(key) == key
    assert placement(key) == parsed.placement
    assert parse_tolerance(f"{key}=0.5") == {key: 0.5}  # a per-key tolerance
    write_arrays(tmp_path / "c.npz", {key: np.zeros((1, 2, 4, 4) if "attention" in key else (1, 2, 3), np.float32)})
    assert key in read_candidate(tmp_path / "c.npz").arrays


@pytest.mark.parametrize("key", BAD)
def test_a_non_key_is_refused_everywhere(key, tmp_path):
    assert try_parse_key(key) is None and not keys.is_output_key(key)
    with pytest.raises(ValueError, match="unknown output key"):
        parse_key(key)
    with pytest.raises(ValueError):
        placement(key)
    if key not in TOLERANCE_KINDS and key == key.strip():  # (a tolerance spec's kinds are stripped)
        with pytest.raises(ValueError, match="unknown kind"):
            parse_tolerance(f"{key}=0.5")
    if canonical_key(key) is None and key != "hidden_states":
        write_arrays(tmp_path / "c.npz", {key: np.zeros((1, 2, 3), np.float32)})
        with pytest.raises(ArrayFileError, match="unexpected key"):
            read_candidate(tmp_path / "c.npz")


def test_what_a_key_names():
    assert parse_key("transformer_layer_3/attention_probs") == keys.OutputKey(
        "transformer_layer_3/attention_probs", "attention_probs", 3, trace=True)
    assert parse_key("attention_probs.3") == keys.OutputKey("attention_probs.3", "attention_probs", 3, trace=False)
    assert parse_key("embeddings/sum") == keys.OutputKey("embeddings/sum", "embeddings/sum", None, trace=True)
    assert [parse_key(k).layers_needed for k in ("hidden_states.4", "attention_probs.4", "transformer_layer_4/key",
                                                 "embeddings/token", "pooled_output")] == [4, 5, 5, 0, 0]
    assert canonical_key("last_hidden_state") == "sequence_output"
    assert canonical_key("pooler_output") == "pooled_output"
    assert canonical_key("attentions.2") == "attention_probs.2" and canonical_key("attentions.02") is None


def test_keys_sort_in_computation_order():
    order = ["embeddings/token", "embeddings/layer_norm", "hidden_states.0", "transformer_layer_0/query",
             "transformer_layer_0/attention_probs", "attention_probs.0", "transformer_layer_0/attention_context",
             "transformer_layer_0/feedforward_layer_norm", "hidden_states.1", "transformer_layer_1/query",
             "transformer_layer_10/query", "sequence_output", "pooled_output"]
    assert sorted(reversed(order), key=lambda k: placement(k)[0]) == order


def test_layer_bounds_and_shapes_come_from_the_parse():
    config = BertConfig(vocabulary_size=10, num_layers=2, num_heads=2, hidden_dim=4, intermediate_dim=6,
                        max_sequence_length=8)
    inputs = {"token_ids": np.zeros((1, 3), np.int64)}
    shapes = expected_shapes(config, 1, 3, ["transformer_layer_1/feedforward_activation", "attention_probs.1",
                                            "transformer_layer_0/attention_scores", "hidden_states.2", "pooled_output"])
    assert shapes == {"transformer_layer_1/feedforward_activation": (1, 3, 6), "attention_probs.1": (1, 2, 3, 3),
                      "transformer_layer_0/attention_scores": (1, 2, 3, 3), "hidden_states.2": (1, 3, 4),
                      "pooled_output": (1, 4)}
    for key, top in (("hidden_states.3", "hidden_states.0 .. hidden_states.2"),
                     ("attention_probs.2", "attention_probs.0 .. attention_probs.1"),
                     ("transformer_layer_2/query", "transformer_layer_0 .. transformer_layer_1")):
        with pytest.raises(ValueError, match=re.escape(top)):
            check_candidate({key: np.zeros(expected_shapes(config, 1, 3, [key])[key], np.float32)}, config, inputs)


def test_no_second_grammar_in_the_package():
    # The old copies: key regexes outside keys.py, and keys taken apart by hand.
    by_hand = re.compile(r're\.compile\([^)]*(hidden_states|transformer_layer|attention_probs)'
                         r'|key\.rsplit\("/"|startswith\("(hidden_states|attention_probs|attentions)\."\)'
                         r'|split\("\."\)\[[01]\]')
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "oracle/keys.py":
            continue
        found += [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
                  for i, line in enumerate(path.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not found, "\n".join(found)
