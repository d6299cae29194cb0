"""Check a transformers `BertModel` against the bert_ref oracle — the CI recipe.

Runs a Hugging Face BERT checkpoint with PyTorch, dumps its outputs for the given inputs to an
`.npz` (keys `sequence_output`, `pooled_output`, `hidden_states.{i}`, `attention_probs.{i}`),
writes the inputs next to it, and prints (or, with `--compare`, runs) the `bert-ref compare`
command that checks them layer by layer:

    python examples/check_transformers_bert.py --model ./my-bert --out-dir ./check
    bert-ref compare ./my-bert --input check/inputs.npz --candidate check/candidate.npz
    bert-ref compare ./my-bert --input check/inputs.npz --candidate check/candidate.npz --truth

`bert-ref compare` exits 0 when every output is within tolerance, 1 when one is not (the table
names the first), 2 on bad files — so a CI step can be exactly that command.

Inputs: `--input FILE` (.npz with token_ids[, segment_ids, padding_mask]), or `--text` sentences
(tokenised with the checkpoint's own tokenizer), or by default keras-hub's `BertBackbone` example
(token_ids of ones, two segments, two padded positions). `--make-random DIR` first writes a small
randomly initialised BertModel to DIR as a Hugging Face checkpoint, to try the recipe offline.

This script needs torch and transformers, and does not import bert_ref: it is the candidate side.
Attention probabilities are only returned by transformers' "eager" attention, which this script
selects; it agrees with the default path wherever a row has at least one valid key.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

EXAMPLE_INPUTS = {
    "token_ids": np.ones((1, 12), dtype=np.int64),
    "segment_ids": np.array([[0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]], dtype=np.int64),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype=np.int64),
}


def make_random_bert(directory: Path, seed: int = 0) -> None:
    """A 2-layer BERT with random weights (transformers' initialisation), saved as safetensors."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, hidden_act="gelu")
    BertModel(config, add_pooling_layer=True).save_pretrained(directory, safe_serialization=True)


def read_inputs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.input:
        with np.load(args.input) as f:
            inputs = {k: f[k] for k in f.files}
        inputs.setdefault("segment_ids", np.zeros_like(inputs["token_ids"]))
        inputs.setdefault("padding_mask", np.ones_like(inputs["token_ids"]))
        return inputs
    if args.text:
        tok = AutoTokenizer.from_pretrained(args.model)
        enc = tok(args.text, padding=True, return_tensors="np", return_token_type_ids=True)
        return {"token_ids": enc["input_ids"], "segment_ids": enc["token_type_ids"],
                "padding_mask": enc["attention_mask"]}
    return dict(EXAMPLE_INPUTS)


def run_transformers(model_dir: str, inputs: dict[str, np.ndarray], dtype: str = "float32") -> dict[str, np.ndarray]:
    model = BertModel.from_pretrained(model_dir, attn_implementation="eager").to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(inputs["token_ids"], dtype=torch.long),
            token_type_ids=torch.as_tensor(inputs["segment_ids"], dtype=torch.long),
            attention_mask=torch.as_tensor(inputs["padding_mask"], dtype=torch.long),
            output_hidden_states=True,
            output_attentions=True,
        )
    def f32(t):  # float16/bfloat16 values are exactly representable in float32
        return t.to(torch.float32).numpy()

    dump = {"sequence_output": f32(out.last_hidden_state), "pooled_output": f32(out.pooler_output)}
    for i, h in enumerate(out.hidden_states):
        dump[f"hidden_states.{i}"] = f32(h)
    for i, a in enumerate(out.attentions):
        dump[f"attention_probs.{i}"] = f32(a)
    return dump


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a Hugging Face BERT checkpoint directory")
    p.add_argument("--make-random", metavar="DIR", help="write a small random BertModel to DIR and use it")
    p.add_argument("--input", help=".npz with token_ids[, segment_ids, padding_mask]")
    p.add_argument("--text", action="append", help="a sentence to tokenise (repeat for a batch)")
    p.add_argument("--out-dir", required=True, help="where to write inputs.npz and candidate.npz")
    p.add_argument("--torch-dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="run the model in this dtype (outputs are saved as float32)")
    p.add_argument("--compare", action="store_true", help="run `bert-ref compare` and exit with its status")
    args = p.parse_args(argv)
    if bool(args.model) == bool(args.make_random):
        p.error("give exactly one of --model DIR and --make-random DIR")
    if args.make_random:
        make_random_bert(Path(args.make_random))
        args.model = args.make_random
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    inputs = read_inputs(args)
    np.savez(out_dir / "inputs.npz", **{k: v.astype(np.int32) for k, v in inputs.items()})
    dump = run_transformers(args.model, inputs, args.torch_dtype)
    np.savez(out_dir / "candidate.npz", **dump)

    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__} ({args.torch_dtype}): "
          f"{len(dump)} arrays for inputs of shape {inputs['token_ids'].shape} -> {out_dir / 'candidate.npz'}")
    command = ["bert-ref", "compare", args.model, "--input", str(out_dir / "inputs.npz"),
               "--candidate", str(out_dir / "candidate.npz")]
    print("check it with:\n  " + " ".join(command) + "\n  " + " ".join(command + ["--truth"]))
    if args.compare:
        exe = shutil.which("bert-ref")
        if exe is None:
            print("bert-ref is not on PATH: pip install bert-ref", file=sys.stderr)
            return 2
        return subprocess.run([exe, *command[1:]]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
