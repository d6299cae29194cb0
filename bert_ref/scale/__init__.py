"""Dataset-scale runs on Dask: sharded, checksummed, resumable; from one laptop to a cluster.

    bert-ref run PRESET --dataset IN --out DIR [--dtype float64] [--outputs sequence_output,pooled_output]
        [--shard-size N] [--scheduler local|processes|synchronous|tcp://HOST:8786] [--workers N]
    bert-ref compare PRESET --dataset IN --candidate DIR_OR_FILES [--reference RUN_DIR] [--truth]

**The job.** The dataset (see `bert_ref.scale.dataset`) is cut into shards of `shard_size` consecutive
records. Each shard is one Dask task: the worker reads its records from the dataset path itself,
sorts them by length into batches of at most `batch_tokens` tokens (little padding), runs
`BertBackbone` on each batch and writes the outputs back in record order to
`DIR/shard-{k:05d}.safetensors`. Only a small job description travels through the scheduler:
workers load the preset from its directory (memory-mapped safetensors, so weights stored in the
policy's dtype are never copied; on a cluster the directory must be on storage every worker sees,
at the same path) and check its sha256 once per process.

**A shard file** holds `record_index` [n] (int64, ascending), `length` [n] (int32, real tokens) and
the outputs: `sequence_output` [n, L, H], `pooled_output` [n, H], `hidden_states.{i}` [n, L, H],
with L the longest record of the shard. Positions at or beyond a record's length are not computed
and hold 0. Written to a temporary name, flushed and renamed (`bert_ref.io.atomic`): a killed run
never leaves a partial file under a shard's name, and the run removes the temporary files of shards
whose worker was killed (nothing else in the directory).

**manifest.json** holds the job (preset, the weights' sha256, config, policy, outputs, the dataset's
sha256, record count, shard size, sequence length), the bert_ref version, and per shard its record
range, file, sha256, size, worker and timings. It is rewritten (atomically) as shards finish.

**Resume.** Rerunning the same command skips every shard the manifest lists whose file still has
the recorded sha256; missing, truncated or corrupt shards are recomputed. A different job in the
same directory is an error naming the field that differs.

**Threads.** Each worker runs one shard at a time with `threads` BLAS / bert_ref threads; keep
workers x threads <= cores. `local` runs shards on `workers` threads of this process (default 1,
with every core for its BLAS); `processes` starts `workers` processes (default one per core, 1
thread each); a Dask cluster's workers use `threads` (default 1): start them with `--nthreads 1`.
"""
