"""Fingerprint of a logit store: what the cached teacher targets were computed from.

A store written for one teacher / tokenizer / dataset / temperature / k must refuse to be read for another, with
an error naming the field that differs. The fingerprint is a flat dict of JSON scalars; a run builds the same
dict (``make_fingerprint``) from what it has, leaving unknown fields as ``None``, and ``compare_fingerprints``
checks every field the run did set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..._version import __version__

FINGERPRINT_FIELDS = (
    "teacher_id",
    "teacher_files_hash",
    "teacher_weights_hash",
    "tokenizer_hash",
    "dataset_fingerprint",
    "sample_ids_hash",
    "num_examples",
    "task",
    "max_length",
    "temperature",
    "k",
    "mode",
    "num_draws",
    "dtype",
    "package_version",
)

# What to do about a mismatch, per field. The message always names the field and both values first.
_HINTS = {
    "teacher_id": "the store holds another teacher's targets; re-run cache-logits with this teacher",
    "teacher_files_hash": "the teacher's weight files changed since the store was written (retrained or replaced in "
    "place); re-run cache-logits with this teacher",
    "teacher_weights_hash": "the teacher's weights changed since the store was written; re-run cache-logits",
    "tokenizer_hash": "the tokenizer (vocabulary or special tokens) differs; token ids would not line up, "
    "re-run cache-logits with this tokenizer",
    "dataset_fingerprint": "the dataset changed since the store was written; re-run cache-logits on this data",
    "sample_ids_hash": "the set of sample ids differs; re-run cache-logits on this data",
    "num_examples": "the number of examples differs; re-run cache-logits on this data",
    "task": "the store was written for another task; re-run cache-logits with this task",
    "max_length": "sequences were truncated differently; re-run cache-logits at this max_length",
    "temperature": "stored log-probabilities are already tempered and top-k values cannot be re-tempered "
    "(the tail mass is lost); re-run cache-logits at temperature={run}",
    "k": "set the run's k to {stored} to use this store, or re-run cache-logits with k={run}",
    "mode": "set the run's mode to {stored} to use this store, or re-run cache-logits with mode={run}",
    "num_draws": "set the run's number of draws to {stored}, or re-run cache-logits with num_samples={run}",
    "dtype": "set the run's dtype to {stored} to use this store, or re-run cache-logits with dtype={run}",
    "package_version": "the store was written by another llm_distill version; re-run cache-logits with this one "
    "(or leave package_version unset in the expected fingerprint to accept it)",
}


class FingerprintMismatchError(ValueError):
    """A logit store does not match the run that wants to read it."""

    def __init__(self, message: str, field: str, stored, run):
        super().__init__(message)
        self.field, self.stored, self.run = field, stored, run


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # view(uint8) rather than .numpy(): numpy has no bfloat16.
    return t.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def hash_state_dict(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], *, full: bool = False, samples_per_tensor: int = 4096
) -> str:
    """Hash of a model's weights: every tensor's name, dtype and shape, plus its values.

    ``full=False`` (the default) hashes ``samples_per_tensor`` elements per tensor at evenly spaced flat
    positions (first and last included): a few MB for any model, and it changes whenever a fine-tune or a
    re-quantisation touches the weights, but it can miss an edit of a single element between two sample
    points. ``full=True`` hashes every byte (about 1 s per GB). The result is prefixed with the method, so
    the two kinds never compare equal by accident.
    """
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.detach().reshape(-1)
        if not full and flat.numel() > samples_per_tensor:
            # Integer arithmetic: a float linspace rounds past the last index for tensors above 2**24 elements.
            idx = torch.arange(samples_per_tensor, device=flat.device) * (flat.numel() - 1) // (samples_per_tensor - 1)
            flat = flat[idx]
        h.update(_tensor_bytes(flat))
    return ("full:" if full else f"sampled{samples_per_tensor}:") + h.hexdigest()


def hash_tokenizer(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id, added tokens included) and the special tokens with their ids."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special_tokens": sorted(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)),
        "special_tokens_map": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def hash_sample_ids(sample_ids: Iterable[int]) -> str:
    """Order-independent sha256 of a set of int64 sample ids."""
    ids = torch.as_tensor(list(sample_ids) if not isinstance(sample_ids, torch.Tensor) else sample_ids)
    return hashlib.sha256(_tensor_bytes(ids.to(torch.int64).sort().values)).hexdigest()


def hash_dataset(dataset, columns: Sequence[str] = ("sample_id", "input_ids", "labels")) -> str:
    """sha256 of a tokenized dataset's content: the given columns of every row, in order.

    A content hash rather than ``datasets.Dataset._fingerprint``: that one is random whenever a ``map`` function
    cannot be hashed, so two identical preprocessing runs could disagree. Missing columns (e.g. labels of an
    unlabelled set) are skipped, and named in the hash so that skipping is not silent. Reads every token once.
    """
    present = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
    cols = [c for c in columns if c in present]
    h = hashlib.sha256(("columns:" + ",".join(cols) + f"|rows:{len(dataset)}|").encode())
    if hasattr(dataset, "with_format"):  # datasets.Dataset: arrow batches, no per-row Python decoding
        for table in dataset.select_columns(cols).with_format("arrow").iter(batch_size=1024):
            per_col = [_arrow_rows(table.column(c)) for c in cols]
            for row in zip(*per_col):
                h.update(b"".join(row))
        return h.hexdigest()
    for row in dataset:
        for c in cols:
            value = row[c]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            arr = np.asarray(value, dtype=np.int64).reshape(-1)
            h.update(np.int64(arr.size).tobytes() + arr.tobytes())
    return h.hexdigest()


def _arrow_rows(column) -> list[bytes]:
    """Per row: length and int64 values of a (possibly list-typed) arrow column, the same bytes as the
    row-by-row path above."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        lengths = np.ones(len(column), dtype=np.int64)
        values = column.to_numpy(zero_copy_only=False).astype(np.int64)
    out, start = [], 0
    for n in lengths.tolist():
        out.append(np.int64(n).tobytes() + values[start : start + n].tobytes())
        start += n
    return out


# Weight files of a saved model: their content is the teacher's identity (not the path that names them).
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_FILES_HASHES: dict[tuple, str] = {}


def teacher_id_of(name_or_path: str | None) -> str | None:
    """A local folder by its resolved absolute path (a relative and an absolute path to it are one teacher); a hub
    id as given."""
    if name_or_path is None:
        return None
    return os.path.realpath(name_or_path) if os.path.isdir(name_or_path) else name_or_path


def hash_model_files(name_or_path: str | None) -> str | None:
    """sha256 over the names and contents of a saved model's weight files; None for anything but a local folder
    holding some (a hub id is identified by its id). Reads every byte once per process (about 1 s per GB)."""
    if name_or_path is None or not os.path.isdir(name_or_path):
        return None
    files = sorted(f for f in os.listdir(name_or_path) if f.endswith(WEIGHT_FILE_SUFFIXES))
    if not files:
        return None
    paths = [os.path.join(name_or_path, f) for f in files]
    key = (os.path.realpath(name_or_path), tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths))
    if key not in _FILES_HASHES:
        h = hashlib.sha256()
        for name, path in zip(files, paths):
            h.update(f"{name}|".encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _FILES_HASHES[key] = h.hexdigest()
    return _FILES_HASHES[key]


def make_fingerprint(
    *,
    teacher_id: str | None = None,
    teacher_files_hash: str | None = None,
    teacher: nn.Module | None = None,
    teacher_weights_hash: str | None = None,
    tokenizer=None,
    tokenizer_hash: str | None = None,
    dataset_fingerprint: str | None = None,
    sample_ids: Iterable[int] | None = None,
    task: str | None = None,
    max_length: int | None = None,
    temperature: float | None = None,
    k: int | None = None,
    mode: str | None = None,
    num_draws: int | None = None,
    dtype: str | None = None,
    package_version: str | None = __version__,
    full_weights_hash: bool = False,
) -> dict:
    """Build a fingerprint dict; fields left ``None`` are not checked by ``compare_fingerprints``.

    Pass ``teacher`` (a module) or a precomputed ``teacher_weights_hash``; ``tokenizer`` or ``tokenizer_hash``;
    ``sample_ids`` (hashed, and counted into ``num_examples``).
    """
    if teacher is not None and teacher_weights_hash is None:
        teacher_weights_hash = hash_state_dict(teacher, full=full_weights_hash)
    if tokenizer is not None and tokenizer_hash is None:
        tokenizer_hash = hash_tokenizer(tokenizer)
    sample_ids_hash = num_examples = None
    if sample_ids is not None:
        ids = list(int(i) for i in sample_ids)
        sample_ids_hash, num_examples = hash_sample_ids(ids), len(ids)
    return {
        "teacher_id": teacher_id,
        "teacher_files_hash": teacher_files_hash,
        "teacher_weights_hash": teacher_weights_hash,
        "tokenizer_hash": tokenizer_hash,
        "dataset_fingerprint": dataset_fingerprint,
        "sample_ids_hash": sample_ids_hash,
        "num_examples": num_examples,
        "task": task,
        "max_length": max_length,
        "temperature": None if temperature is None else float(temperature),
        "k": k,
        "mode": mode,
        "num_draws": num_draws,
        "dtype": dtype,
        "package_version": package_version,
    }


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def compare_fingerprints(stored: Mapping, expected: Mapping, *, where: str = "logit store") -> None:
    """Raise ``FingerprintMismatchError`` at the first field set in ``expected`` that differs from ``stored``.

    The teacher is identified by the content of its weight files when both sides know it (``teacher_files_hash``);
    its id (a resolved folder path, or a hub id) is compared only when they do not (a hub id, a store written before
    the files hash was recorded). ``where`` names the store in the message (e.g. its path or the config field).
    """
    unknown = set(expected) - set(FINGERPRINT_FIELDS)
    if unknown:
        raise ValueError(f"unknown fingerprint field(s) {sorted(unknown)}; known: {', '.join(FINGERPRINT_FIELDS)}")
    by_content = bool(stored.get("teacher_files_hash")) and bool(expected.get("teacher_files_hash"))
    for field in FINGERPRINT_FIELDS:
        run = expected.get(field)
        if run is None or (field == "teacher_id" and by_content):
            continue
        if field == "teacher_files_hash" and not by_content:
            continue  # one side cannot tell: the teacher id decides
        old = stored.get(field)
        if field == "teacher_id":
            old = teacher_id_of(old)
        if not _same(old, run):
            hint = _HINTS[field].format(stored=old, run=run)
            raise FingerprintMismatchError(
                f"{where} was written with {field}={old!r} but this run uses {field}={run!r}; {hint}", field, old, run
            )


def store_dataset(train_dataset, eval_dataset=None):
    """The rows a recipe's store holds: training rows, then evaluation rows (sample ids never collide)."""
    if eval_dataset is None:
        return train_dataset
    from datasets import concatenate_datasets

    return concatenate_datasets([train_dataset, eval_dataset])


def expected_store_fingerprint(args, task: str, tokenizer, train_dataset, eval_dataset=None) -> dict:
    """What a training run requires of its logit store: the teacher (when named: its weight files' content, or its
    id), tokenizer, task, temperature and the content of the rows it will look up."""
    rows = None
    if train_dataset is not None and hasattr(train_dataset, "column_names"):
        rows = hash_dataset(store_dataset(train_dataset, eval_dataset))
    return make_fingerprint(
        teacher_id=teacher_id_of(args.teacher_model_name_or_path),
        teacher_files_hash=hash_model_files(args.teacher_model_name_or_path),
        tokenizer=tokenizer,
        task=task,
        temperature=args.temperature,
        dataset_fingerprint=rows,
    )
