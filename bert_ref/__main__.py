"""`python -m bert_ref`: the `bert-ref` command (see `bert_ref.cli`)."""

import sys

from .cli import main

sys.exit(main())
