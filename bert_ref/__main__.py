"""`python -m bert_ref`: the `bert-ref` command (see `bert_ref.cli`)."""

import sys

from bert_ref.cli import main

sys.exit(main())
