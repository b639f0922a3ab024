"""The on-disk format of a logit store (sparse teacher targets), and the file operations both sides share.

Layout of a store directory::

    manifest.json                         format, fingerprint, settings, vocab_size, one entry per shard
    shard-00000-rank0.safetensors          one shard = ``shard_size`` consecutive dataset rows
    shard-00001-rank1.safetensors          (rank = the process that wrote it)
    manifest.rank0.json                   per-process progress while writing; merged into manifest.json

A shard is a safetensors file holding, for its N samples and their R counted rows in total:

    sample_ids      int64 (N,)      the examples' stable ids
    row_offsets     int64 (N+1,)    rows of sample i are row_offsets[i]:row_offsets[i+1]
    positions       int32 (R,)      counted position of each row, relative to the sample's first attended token
                                    (so left and right padding, and any batch composition, give the same value)
    ids             int32 (R, w)    top-k ids (sorted by probability) or the unique sampled ids
    logprobs        dtype (R, w)    teacher log-softmax(z / T) at those ids (dtype: float16 | bfloat16 | float32)
    tail_logprobs   dtype (R,)      top-k only: log(1 - sum of the top-k probabilities), floored at LOG_FLOOR
    counts          int16 (R, w)    sampled only: how often each id was drawn (weights = counts / num_draws)

Counted rows follow the trainer's mask: causal LM, position t where labels[t+1] != -100 (logits at t predict
token t+1); masked LM, labels[t] != -100; sequence classification, one row per sample at position 0.

Every shard is written to a temporary file, fsynced and renamed into place; its sha256 goes into the manifest,
which is itself rewritten atomically after every shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from ...tasks import TASKS, targets

FORMAT = "llm_distill.logit_store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODES = ("topk", "sampled")
# Dtypes of stored log-probabilities: the package's dtype names less "auto" (a store must say what it holds).
STORE_DTYPES = ("float16", "bfloat16", "float32")


class LogitStoreError(RuntimeError):
    """A logit store is missing, incomplete, corrupted, or does not hold what was asked for."""

    user_error = True  # the CLI prints the message, not a traceback: the message says how to repair the store


class CorruptShardError(LogitStoreError):
    """A shard file is truncated or its bytes do not match the checksum in the manifest."""


def shard_name(index: int, rank: int) -> str:
    return f"shard-{index:05d}-rank{rank}.safetensors"


# What a manifest may name: a shard file directly inside the store (never a path that leaves it).
SHARD_NAME = re.compile(r"shard-\d{5,}-rank\d+\.safetensors")


def rank_manifest_name(rank: int) -> str:
    return f"manifest.rank{rank}.json"


def counted_mask(batch: Mapping, task: str) -> torch.Tensor:
    """Bool mask of the positions that carry a target, shaped like the student's logits' leading dims.

    Token tasks use ``tasks.targets`` (the one definition the trainer uses too); for sequence classification every
    row is stored, labelled or not, so the mask is all True ``(B,)``.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {', '.join(TASKS)}")
    if task == "sequence_classification":
        return torch.ones(batch["input_ids"].shape[0], dtype=torch.bool, device=batch["input_ids"].device)
    if batch.get("labels") is None:
        raise ValueError(f"task={task!r} needs a 'labels' column (-100 where a token does not count) in the batch")
    return targets(dict(batch), task)[0]


def first_attended(batch: Mapping) -> torch.Tensor:
    """``(B,)`` index of each row's first attended token (0 without an attention mask): the position origin."""
    am = batch.get("attention_mask")
    if am is None:
        return torch.zeros(batch["input_ids"].shape[0], dtype=torch.long, device=batch["input_ids"].device)
    # argmax returns the first maximum; an all-zero row gives 0.
    return (am != 0).int().argmax(dim=1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms where a directory cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of ``data``, never a prefix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def encode_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise one shard; the bytes depend only on the tensors and metadata (no timestamps), so a resumed
    run reproduces an uninterrupted one byte for byte."""
    # One metadata key holding sorted JSON: safetensors writes its metadata map in hash order, so several keys
    # would come out in a different order from one process to the next.
    header = {"llm_distill": json.dumps(metadata, sort_keys=True)}
    return safetensors_save({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=header)


def read_manifest(path: Path) -> dict:
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise LogitStoreError(f"{path} is not valid JSON ({e}); the store is damaged") from e
    if manifest.get("format") != FORMAT:
        raise LogitStoreError(f"{path} is not a logit store manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LogitStoreError(
            f"{path} has format_version={manifest.get('format_version')!r}; this llm_distill reads version "
            f"{FORMAT_VERSION}: re-run cache-logits"
        )
    for entry in manifest.get("shards", []):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise LogitStoreError(
                f"{path} lists a shard file {name!r}, which is not a shard name inside the store (expected "
                "shard-NNNNN-rankR.safetensors); the manifest is damaged or was edited: re-run cache-logits into a "
                "new folder"
            )
    return manifest


def pad_width(t: torch.Tensor, width: int, value) -> torch.Tensor:
    """Right-pad the last dim of ``t`` to ``width`` with ``value``."""
    if t.shape[-1] == width:
        return t
    pad = torch.full((*t.shape[:-1], width - t.shape[-1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=-1)
