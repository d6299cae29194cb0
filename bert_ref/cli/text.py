"""`bert-ref embed` and `bert-ref tokenize`: text in, vectors or word pieces out.

    bert-ref embed PRESET "text" ["text" ...] [--output OUT] [--pooling MODE]
                   [--normalize | --no-normalize] [--dtype D] [--batch-size N]
    bert-ref tokenize PRESET ["text" ...] [--sequence-length N] [--pair "text"]

With no text on the command line, each non-blank line of standard input is one text.
`embed` prints one JSON array per text (float32 values written exactly) or, with `--output`,
writes `{"embeddings": (N, hidden_dim)}` as `.npz`, `.safetensors` or `.json`.
`tokenize` prints one JSON object per text: its word pieces and their ids (no [CLS]/[SEP]), or with
`--sequence-length` the packed `token_ids`, `segment_ids` and `padding_mask` a backbone receives.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np

from bert_ref.model.precision import POLICY_NAMES
from bert_ref.text.lines import check_text, iter_lines
from bert_ref.text.sentence import POOLING_MODES, SentenceEncoder
from bert_ref.text.tokenizer import BertTokenizer


class _TextError(ValueError):
    pass


def _texts(args: argparse.Namespace) -> list[str]:
    """The texts: the arguments, else the non-blank lines of standard input, read by the one text
    policy (`bert_ref.text.lines`: strict UTF-8, LF line ends, a leading BOM skipped)."""
    if args.texts:
        return [check_text(t, f"TEXT argument {i + 1}") for i, t in enumerate(args.texts)]
    if sys.stdin is None or sys.stdin.isatty():
        raise _TextError("no text given: pass texts as arguments or pipe them on standard input")
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    texts = [text for _, _, text in iter_lines(data, "<stdin>")]
    if not texts:
        raise _TextError("standard input holds no text (only blank lines)")
    return texts


def _configure_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="a preset (local directory, built-in name, kaggle://, hf://)")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to embed (default: lines of stdin)")
    p.add_argument("--output", metavar="OUT", help="write the (N, hidden_dim) array here (.npz, .safetensors, .json)")
    p.add_argument("--pooling", choices=POOLING_MODES, default=None,
                   help="default: the preset's sentence-transformers pooling, else mean")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                      help="scale vectors to unit L2 norm (default: as the preset's modules.json says)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_false")
    p.add_argument("--dtype", choices=POLICY_NAMES, default=None, help="dtype policy of the backbone")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")


def _run_embed(args: argparse.Namespace) -> int:
    texts = _texts(args)
    for i, t in enumerate(texts):
        if not t.strip():
            raise _TextError(f"text {i + 1} is empty: there is nothing to embed")
    encoder = SentenceEncoder.from_preset(args.preset, dtype=args.dtype, pooling=args.pooling,
                                          normalize=args.normalize)
    vectors = encoder.encode(texts, batch_size=args.batch_size)
    if args.output:
        from bert_ref.io.arrays import write_arrays

        path = write_arrays(args.output, {"embeddings": vectors})
        print(f"wrote embeddings {vectors.shape} {vectors.dtype} to {path}", file=sys.stderr)
        return 0
    out = sys.stdout
    for row in vectors:
        out.write(json.dumps([float(x) for x in row]) + "\n")
    out.flush()
    return 0


def _configure_tokenize(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="a preset (local directory, built-in name, kaggle://, hf://)")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to tokenize (default: lines of stdin)")
    p.add_argument("--sequence-length", type=int, default=None, metavar="N",
                   help="also pack each text into N positions ([CLS] text [SEP] + padding)")
    p.add_argument("--pair", metavar="TEXT", default=None,
                   help="second segment packed after every text (needs --sequence-length)")


def _run_tokenize(args: argparse.Namespace) -> int:
    texts = _texts(args)
    if args.pair is not None:
        check_text(args.pair, "--pair")
    if args.pair is not None and args.sequence_length is None:
        raise _TextError("--pair needs --sequence-length")
    if args.sequence_length is not None:
        from bert_ref.model import limits

        limits.check("sequence_length", args.sequence_length, "--sequence-length")
    tok = BertTokenizer.from_preset(args.preset)
    out = sys.stdout
    for text in texts:
        record = {"text": text, "tokens": tok.tokenize(text), "ids": tok.encode(text)}
        if args.sequence_length is not None:
            pair = None if args.pair is None else [args.pair]
            packed = tok([text], pair, sequence_length=args.sequence_length)
            record.update({k: np.asarray(v[0]).astype(int).tolist() for k, v in packed.items()})
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def add_commands(register: Callable[..., None]) -> None:
    register("embed", "sentence embeddings of texts", _configure_embed, _run_embed,
             "Embed each TEXT (or each non-blank stdin line) with PRESET: tokenize, run the backbone, "
             "pool and optionally normalise, following the preset's sentence-transformers settings "
             "when it has them. Prints one JSON array per text, or writes --output.")
    register("tokenize", "WordPiece tokens and ids of texts", _configure_tokenize, _run_tokenize,
             "Tokenize each TEXT (or each non-blank stdin line) with PRESET's vocabulary. Prints one "
             "JSON object per text with its tokens and ids (and the packed inputs with "
             "--sequence-length).")
