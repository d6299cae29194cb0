"""The oracle in a port's own test suite: `assert_close_to_reference` (defined in
`bert_ref.oracle.testing`; this is its public address)."""

from bert_ref.oracle.testing import assert_close_to_reference

__all__ = ["assert_close_to_reference"]
