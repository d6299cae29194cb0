"""Dataset-scale runs: sharded, checksummed, resumable, from one laptop to a Dask cluster; the packed
inputs a port runs on, and the dataset compare that judges it (docs/dataset.md).

    bert-ref pack PRESET --dataset IN --out DIR [--shard-size N] [--batch-tokens T]
    bert-ref run PRESET --dataset IN --out DIR [--dtype float64] [--outputs sequence_output,pooled_output]
        [--shard-size N] [--scheduler local|processes|synchronous|tcp://HOST:8786] [--workers N]
    bert-ref compare PRESET --dataset IN --candidate DIR_OR_FILES [--reference RUN_DIR] [--floor-from RUN_DIR]
        [--precision P] [--floor-ratio K] [--atol A] [--rtol R] [--records A:B] [--junit FILE]

**The job.** The dataset (`bert_ref.scale.dataset`) is cut into shards of `shard_size` consecutive
records. Each shard is one task: the worker reads its records from the dataset path itself, sorts
them by length into batches of at most `batch_tokens` tokens (little padding), runs `BertBackbone`
on each batch and writes the inputs and the outputs at valid positions, in record order, to
`DIR/shard-{k:05d}.safetensors` (the layout: `bert_ref.scale.shards`). Only a small job description
travels to the workers: they load the preset from its directory (memory-mapped, so weights stored
in the policy's dtype are never copied; on a cluster the directory must be on storage every worker
sees, at the same path) and check the weights' and tokenizer's sha256 once per process.

**The run directory** holds the shards, `manifest.json` (the job's identity and one entry per
finished shard) and a lock (`bert_ref.scale.run`): a rerun resumes, skipping every shard whose file
still has its sha256; a different job in the same directory is an error naming the field that
differs; a second run on it at the same time is refused.

**Engines** (`bert_ref.scale.engine`): tasks are submitted a window at a time to a thread pool
(`local`), a process pool (`processes`), this thread (`synchronous`) or a Dask cluster
(`tcp://`, probed with a timeout first). Each worker runs one shard at a time with `threads` BLAS /
bert_ref threads; keep workers x threads <= cores.

**The compare** (`bert_ref.scale.compare`, `bert_ref.scale.candidate`): a port's outputs, read a
shard at a time, judged batch by batch by the oracle's own verdict and merged into one verdict per
output over the dataset.
"""
