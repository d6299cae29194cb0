"""`compare --dataset`: a candidate's shards against the reference, record by record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ref.oracle.keys import parse_key, try_parse_key
from bert_ref.oracle.report import json_safe
from bert_ref.oracle.tolerances import DEFAULT_ATOL, DEFAULT_RTOL
from bert_ref.scale.dataset import DatasetError
from bert_ref.scale.engine import Engine, Progress
from bert_ref.scale.options import DEFAULT_BATCH_TOKENS, DEFAULT_SHARD_SIZE, OUTPUT_CHOICES
from bert_ref.scale.run import job_for, prepare_job
from bert_ref.scale.shards import MANIFEST, ScaleJob, compute_outputs, shard_name, verify_shard

# ----------------------------------------------------------------------------------------------
# compare


_SEQUENCE_KEYS = ("sequence_output",)


def _is_dataset_output(key: str) -> bool:
    parsed = try_parse_key(key)
    return parsed is not None and not parsed.trace and parsed.name in OUTPUT_CHOICES


def _candidate_outputs(f: Path, header: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> list[str]:
    """The output keys of a candidate file, checked by the one reader's rules (key grammar, dtype);
    inputs stored with them are ignored, as in a one-batch candidate."""
    from bert_ref.io.arrays import ArrayFileError
    from bert_ref.oracle.candidates import check_input_dtype, check_output_dtype, output_name

    outs = []
    try:
        for key, (_, dtype) in header.items():
            if key in ("record_index", "length"):
                check_input_dtype(dtype, str(f), key)  # integers
                continue
            name = output_name(key, str(f))
            if name is None:
                continue
            if name != key or not _is_dataset_output(key):
                raise DatasetError(f"{f}: key {key!r}: a dataset candidate file holds sequence_output, pooled_output "
                                   "and hidden_states.{i} by these names, with records on the first axis (and "
                                   "optionally record_index)")
            check_output_dtype(dtype, str(f), key)
            outs.append(key)
    except ArrayFileError as e:
        raise DatasetError(str(e)) from None
    return outs


def _index_candidate(paths: Sequence[str | os.PathLike],
                     num_records: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(files, keys, file of each record, row of each record) of a candidate's output files."""
    from bert_ref.scale.dataset import array_header

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npz", ".safetensors"))
            if not found:
                raise DatasetError(f"{p}: holds no .npz or .safetensors files of outputs")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or directory")
    rec_file = np.full(num_records, -1, np.int64)
    rec_row = np.full(num_records, -1, np.int64)
    keys: list[str] | None = None
    next_record = 0
    for i, f in enumerate(files):
        header = array_header(f)
        outs = _candidate_outputs(f, header)
        if not outs:
            raise DatasetError(f"{f}: holds no outputs (sequence_output, pooled_output, hidden_states.{{i}})")
        outs.sort(key=lambda k: parse_key(k).placement[0])
        if keys is None:
            keys = outs
        elif outs != keys:
            raise DatasetError(f"{f}: holds {outs}, but {files[0]} holds {keys}; every candidate file must hold "
                               "the same outputs")
        rows = {header[k][0][0] for k in outs}
        if len(rows) != 1:
            raise DatasetError(f"{f}: outputs have different numbers of records: {sorted(rows)}")
        n = rows.pop()
        if "record_index" in header:
            from bert_ref.scale.dataset import ArrayFile, load_rows

            index = load_rows(ArrayFile(str(f), header["record_index"][0][0], 0, ("record_index",)), 0,
                               header["record_index"][0][0])["record_index"].reshape(-1)
            if index.shape[0] != n:
                raise DatasetError(f"{f}: record_index has {index.shape[0]} entries but the outputs have {n} records")
        else:
            index = np.arange(next_record, next_record + n)
        out_of_range = np.flatnonzero((index < 0) | (index >= num_records))
        if out_of_range.size:
            j = int(out_of_range[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, outside the dataset's [0, {num_records})")
        index = index.astype(np.int64)  # in range: no uint64 wraps around
        seen = rec_file[index] >= 0
        if seen.any():
            j = int(np.flatnonzero(seen)[0])
            raise DatasetError(f"{f}: row {j} is record {int(index[j])}, which {files[rec_file[index[j]]]} also holds")
        rec_file[index] = i
        rec_row[index] = np.arange(n)
        next_record = int(index.max()) + 1 if n else next_record
    missing = np.flatnonzero(rec_file < 0)
    if missing.size:
        raise DatasetError(f"the candidate has no outputs for {missing.size} of {num_records} records "
                           f"(the first is record {int(missing[0])})")
    return [str(f) for f in files], keys or [], rec_file, rec_row


def _candidate_rows(files: Sequence[str], rec_file: np.ndarray, rec_row: np.ndarray,
                    keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The candidate's outputs for a list of records, in that order."""
    from bert_ref.scale.dataset import ArrayFile, load_rows

    out: dict[str, list] = {k: [None] * len(rec_file) for k in keys}
    for fi in np.unique(rec_file):
        pos = np.flatnonzero(rec_file == fi)
        rows = rec_row[pos]
        a, b = int(rows.min()), int(rows.max()) + 1
        data = load_rows(ArrayFile(files[fi], 0, 0, tuple(keys)), a, b)
        for k in keys:
            for p, r in zip(pos, rows, strict=True):
                out[k][p] = data[k][r - a]
    result = {}
    for k, parts in out.items():
        width = max(p.shape[0] for p in parts) if parts[0].ndim >= 2 else None
        if width is None:
            result[k] = np.stack(parts)
        else:
            result[k] = np.stack([np.pad(p, [(0, width - p.shape[0])] + [(0, 0)] * (p.ndim - 1)) for p in parts])
    return result


def compare_shard(job: ScaleJob, shard: int, start: int, stop: int, cand_files: Sequence[str], rec_file: np.ndarray,
                  rec_row: np.ndarray, keys: Sequence[str], atol: float, rtol: float, worst: int,
                  reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Dask task of `compare_dataset`: statistics of one shard (valid positions only)."""
    t0 = time.perf_counter()
    if reference is not None:
        why = verify_shard(reference["dir"], reference["entry"])
        if why is not None:
            raise DatasetError(f"reference shard {shard} ({Path(reference['dir']) / shard_name(shard)}): {why}; "
                               "rerun `bert-ref run` with the same arguments to recompute it")
        from safetensors.numpy import load_file

        ref = load_file(str(Path(reference["dir"]) / reference["entry"]["file"]))
        missing = [k for k in keys if k not in ref]
        if missing:
            raise DatasetError(f"{reference['dir']}: the run holds no {missing[0]}; rerun it with --outputs "
                               "including it")
        sources = None
    else:
        records, ref, _ = compute_outputs(job, start, stop)
        sources = records.sources
    lengths = ref["length"].astype(np.int64)
    cand = _candidate_rows(cand_files, rec_file, rec_row, keys)
    stats = {}
    for key in keys:
        r, c = ref[key], cand[key]
        if key not in _SEQUENCE_KEYS and parse_key(key).name != "hidden_states":
            valid = np.ones(r.shape[:1], bool)
            if c.shape[1:] != r.shape[1:]:
                raise DatasetError(f"{key}: the candidate's records have shape {c.shape[1:]}, the reference's "
                                   f"{r.shape[1:]}")
            rr, cc, rec_of = r.astype(np.float64), c.astype(np.float64), np.arange(r.shape[0])
            elem_rec = np.repeat(rec_of, int(np.prod(r.shape[1:])))
            pos = None
            rr, cc = rr.reshape(-1), cc.reshape(-1)
        else:
            if c.shape[2:] != r.shape[2:]:
                raise DatasetError(f"{key}: the candidate's positions have shape {c.shape[2:]}, the reference's "
                                   f"{r.shape[2:]}")
            short = np.flatnonzero(lengths > c.shape[1])
            if short.size:
                j = int(short[0])
                raise DatasetError(f"{key}: record {start + j} has {int(lengths[j])} tokens but the candidate gives "
                                   f"{c.shape[1]} positions")
            width = min(r.shape[1], c.shape[1])
            valid = np.arange(width)[None, :] < lengths[:, None]  # [n, L]
            rr, cc = r[:, :width][valid].astype(np.float64), c[:, :width][valid].astype(np.float64)  # [T, H]
            elem_rec = np.repeat(np.nonzero(valid)[0], r.shape[2])
            pos = np.repeat(np.nonzero(valid)[1], r.shape[2])
            rr, cc = rr.reshape(-1), cc.reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(cc - rr)
        finite = np.isfinite(rr) & np.isfinite(cc)
        same = (np.isnan(rr) & np.isnan(cc)) | (rr == cc)
        err = np.where(finite, err, np.where(same, 0.0, np.inf))
        tol = atol + rtol * np.abs(np.where(np.isfinite(rr), rr, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
        n = r.shape[0]
        per_max = np.zeros(n)
        per_ratio = np.zeros(n)
        np.maximum.at(per_max, elem_rec, err)
        np.maximum.at(per_ratio, elem_rec, ratio)
        order = np.argsort(-per_ratio, kind="stable")[:worst]
        w = int(np.argmax(ratio)) if ratio.size else 0
        channel = r.shape[-1]
        stats[key] = {
            "count": int(err.size), "sum_sq": float(np.sum(np.square(err))) if np.isfinite(err).all() else math.inf,
            "max_abs": float(err.max()) if err.size else 0.0, "max_ratio": float(ratio.max()) if ratio.size else 0.0,
            "nonfinite_mismatch": int((~finite & ~same).sum()),
            "worst_element": None if not err.size else {
                "record": start + int(elem_rec[w]), "position": None if pos is None else int(pos[w]),
                "channel": int(w % channel), "reference": float(rr[w]), "candidate": float(cc[w])},
            "worst_records": [{"record": start + int(j), "max_abs": float(per_max[j]), "ratio": float(per_ratio[j]),
                               "source": sources[j] if sources else None} for j in order],
        }
    return {"shard": shard, "stats": stats, "seconds": time.perf_counter() - t0}


@dataclasses.dataclass
class DatasetReport:
    """Statistics of a candidate's outputs against the reference over a whole dataset.

    `entries` maps each output key (in computation order) to: count (valid elements), max_abs, rms,
    max_ratio (the worst |c - r| / (atol + rtol*|r|); <= 1 passes), passed, worst_element, and
    worst_records (record index, its max abs error and ratio, and its source)."""

    entries: dict[str, dict[str, Any]]
    atol: float
    rtol: float
    num_records: int
    reference_name: str
    candidate_name: str

    @property
    def passed(self) -> bool:
        return all(e["passed"] for e in self.entries.values())

    @property
    def first_failure(self) -> str | None:
        return next((k for k, e in self.entries.items() if not e["passed"]), None)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"passed": self.passed, "first_failure": self.first_failure, "atol": self.atol,
                           "rtol": self.rtol, "records": self.num_records, "reference": self.reference_name,
                           "candidate": self.candidate_name, "entries": self.entries})

    def format_table(self) -> str:
        rows = [["key", "elements", "max abs", "rms", "x tol", "worst records (record: max abs)", "result"]]
        for k, e in self.entries.items():
            worst = ", ".join(f"{w['record']}: {w['max_abs']:.2e}" for w in e["worst_records"][:3])
            rows.append([k, f"{e['count']:,}", f"{e['max_abs']:.2e}", f"{e['rms']:.2e}", f"{e['max_ratio']:.3g}",
                         worst, "ok" if e["passed"] else "FAIL"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        rule = f"|candidate - reference| <= atol + rtol*|reference|, atol={self.atol:g}, rtol={self.rtol:g}"
        head = f"{self.candidate_name} vs {self.reference_name}, {self.num_records} records, valid positions"
        if self.passed:
            tail = f"PASS: all {len(self.entries)} outputs within tolerance ({rule})."
        else:
            k = self.first_failure or ""
            e = self.entries[k]
            we = e["worst_element"]
            where = f"record {we['record']}" + (f", position {we['position']}" if we["position"] is not None else "") \
                + f", channel {we['channel']}"
            src = next((w["source"] for w in e["worst_records"] if w["record"] == we["record"] and w["source"]), None)
            tail = (f"FAIL: {sum(not x['passed'] for x in self.entries.values())} of {len(self.entries)} outputs over "
                    f"tolerance ({rule}).\nFirst over tolerance: {k}: max abs error {e['max_abs']:.3e} "
                    f"({e['max_ratio']:.3g}x its tolerance) at {where}" + (f" ({src})" if src else "")
                    + f" (reference {we['reference']:.7g}, candidate {we['candidate']:.7g}).")
        return head + "\n" + "\n".join(lines) + "\n" + tail


def compare_dataset(
    preset: str,
    dataset: str | os.PathLike,
    candidate: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    reference: str | os.PathLike | None = None,
    dtype: Any = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    shard_size: int = DEFAULT_SHARD_SIZE,
    scheduler: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    sequence_length: int | None = None,
    truncate: bool = False,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    worst: int = 5,
    progress: bool | None = None,
) -> DatasetReport:
    """Compare a candidate's outputs on `dataset` with ours, over every record.

    Args:
        candidate: a directory of `.npz` / `.safetensors` files, or a list of files. Each holds
            outputs with records on the first axis (`sequence_output` [n, S, H] with S at least each
            record's length; `pooled_output` [n, H]; `hidden_states.{i}`) and optionally
            `record_index` [n]; without it, files hold consecutive records in file-name order.
        reference: a `run_dataset` directory to read the reference from (every shard's sha256 is
            checked); None computes it on the fly with policy `dtype`, writing nothing.
        atol, rtol: an element passes when `|c - r| <= atol + rtol * |r|`; only valid positions
            (below each record's length) are compared.
        worst: how many worst records to report per output.
        The other arguments are `run_dataset`'s.

    Returns:
        A `DatasetReport`; `report.passed` is the verdict.
    """
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"--atol and --rtol must be >= 0, got {atol} and {rtol}")
    engine = Engine(scheduler, workers, threads)
    ref_manifest = None
    if reference is not None:
        path = Path(reference) / MANIFEST
        if not path.is_file():
            raise DatasetError(f"--reference {reference}: no {MANIFEST}; give a `bert-ref run --dataset` directory")
        ref_manifest = json.loads(path.read_text(encoding="utf-8"))
        if not ref_manifest.get("complete"):
            raise DatasetError(f"--reference {reference}: the run is not complete; rerun `bert-ref run` to finish it")
        rj = ref_manifest["job"]
        dtype, shard_size = rj["policy"], int(rj["shard_size"])
        sequence_length, truncate = rj["sequence_length"], rj["truncate"]
    job, fields, _ = prepare_job(preset, dataset, dtype=dtype, sequence_length=sequence_length, truncate=truncate,
                              outputs=OUTPUT_CHOICES, batch_tokens=batch_tokens, threads=engine.threads, out=None)
    if ref_manifest is not None:
        for name in ("weights_sha256", "tokenizer_sha256", "dataset_sha256", "num_records"):
            if ref_manifest["job"].get(name) != fields[name]:
                raise DatasetError(f"--reference {reference}: its {name} is {ref_manifest['job'].get(name)!r}, "
                                   f"but {preset} / {dataset} give {fields[name]!r}")
    paths = [candidate] if isinstance(candidate, (str, os.PathLike)) else list(candidate)
    files, keys, rec_file, rec_row = _index_candidate(paths, job.dataset.num_records)
    layers = fields["config"]["num_layers"]
    for k in keys:
        if parse_key(k).layers_needed > layers:
            raise DatasetError(f"the candidate holds {k} but {preset} has {layers} layers "
                               f"(hidden_states.0 .. hidden_states.{layers})")
    wanted = tuple(o for o in OUTPUT_CHOICES if any(parse_key(k).name == o for k in keys))
    job = dataclasses.replace(job, outputs=wanted)
    shards = job.dataset.shards(shard_size)
    tasks = []
    for i, (a, b) in enumerate(shards):
        ref = None
        if ref_manifest is not None and reference is not None:
            ref = {"dir": str(Path(reference).resolve()), "entry": ref_manifest["shards"][i]}
        tasks.append((job_for(job, a, b), i, a, b, files, rec_file[a:b], rec_row[a:b], keys, atol, rtol, worst, ref))
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    bar = Progress(job.dataset.num_records, 0, progress)

    def done(i: int, result: dict[str, Any]) -> None:
        results[i] = result
        bar.update(shards[i][1] - shards[i][0])

    try:
        engine.run(compare_shard, tasks, done)
    finally:
        bar.close()
    entries = {}
    for key in keys:
        parts = [r["stats"][key] for r in results if r is not None]
        count = sum(p["count"] for p in parts)
        sum_sq = sum(p["sum_sq"] for p in parts)
        top = max(parts, key=lambda p: p["max_ratio"])
        worst_records = sorted((w for p in parts for w in p["worst_records"]), key=lambda w: -w["ratio"])[:worst]
        if reference is not None:
            for w in worst_records:
                w["source"] = None
        max_ratio = max(p["max_ratio"] for p in parts)
        entries[key] = {"count": count, "max_abs": max(p["max_abs"] for p in parts),
                        "rms": math.sqrt(sum_sq / count) if count else 0.0, "max_ratio": max_ratio,
                        "nonfinite_mismatch": sum(p["nonfinite_mismatch"] for p in parts),
                        "passed": bool(max_ratio <= 1.0), "worst_element": top["worst_element"],
                        "worst_records": worst_records}
    ref_name = f"our {job.policy}" + (f" ({reference})" if reference is not None else "")
    cand_name = Path(paths[0]).name if len(paths) == 1 else f"{len(files)} files"
    return DatasetReport(entries, float(atol), float(rtol), job.dataset.num_records, ref_name, cand_name)
