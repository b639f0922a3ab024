"""On-disk store of sparse teacher targets (the offline teacher).

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .store_fingerprint import compare_fingerprints
from .tasks import AUTO_CLASSES, targets

FORMAT = "llm_distill.logit_store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS = tuple(AUTO_CLASSES)  # the tasks the trainer distils
MODES = ("topk", "sampled")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class LogitStoreError(RuntimeError):
    """A logit store is missing, incomplete, corrupted, or does not hold what was asked for."""


class CorruptShardError(LogitStoreError):
    """A shard file is truncated or its bytes do not match the checksum in the manifest."""


def shard_name(index: int, rank: int) -> str:
    return f"shard-{index:05d}-rank{rank}.safetensors"


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
    return manifest


class LogitStore:
    """Read-only view of a finished store; rows are looked up by ``sample_id``.

    Opening reads only the manifest. The sample-id index (8 bytes per sample per shard) is built on the first
    lookup; shards are memory-mapped through ``safe_open`` and only the rows asked for are read.

    Args:
        path: the store directory.
        expected: a fingerprint (see ``store_fingerprint.make_fingerprint``); every field it sets must match.
        verify: ``"checksum"`` (sha256 of a shard the first time rows are read from it), ``"size"`` (file size
            only; truncation is still caught), or ``"none"``.
        name: how errors refer to the store (e.g. ``"teacher_logits_path store"``); defaults to the path.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        expected: Mapping | None = None,
        verify: str = "checksum",
        name: str | None = None,
    ):
        self.path = Path(path)
        self.name = name or f"logit store {self.path}"
        if verify not in ("checksum", "size", "none"):
            raise ValueError(f"verify={verify!r}; expected 'checksum', 'size' or 'none'")
        self.verify_mode = verify
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            partial = sorted(p.name for p in self.path.glob("manifest.rank*.json")) if self.path.is_dir() else []
            state = f"only partial manifests {partial} exist: the writer did not finish" if partial else "not found"
            raise LogitStoreError(
                f"{self.name}: {manifest_path} {state}; run (or resume) cache-logits to write the store"
            )
        self.manifest = read_manifest(manifest_path)
        if not self.manifest.get("complete"):
            raise LogitStoreError(f"{self.name}: manifest says the store is incomplete; resume cache-logits")
        if expected is not None:
            self.check_fingerprint(expected)
        self._handles: dict[int, object] = {}
        self._verified: set[int] = set()
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._offsets: dict[int, np.ndarray] = {}

    # ----- metadata -------------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        return self.manifest["fingerprint"]

    @property
    def mode(self) -> str:
        return self.fingerprint["mode"]

    @property
    def task(self) -> str:
        return self.fingerprint["task"]

    @property
    def temperature(self) -> float:
        return self.fingerprint["temperature"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def num_draws(self) -> int | None:
        return self.fingerprint.get("num_draws")

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    def check_fingerprint(self, expected: Mapping) -> None:
        compare_fingerprints(self.fingerprint, expected, where=self.name)

    # ----- integrity ------------------------------------------------------------------------------------------
    def _shard_path(self, i: int) -> Path:
        return self.path / self.shards[i]["file"]

    def _check_shard(self, i: int, *, checksum: bool) -> None:
        entry, path = self.shards[i], self._shard_path(i)
        if not path.is_file():
            raise CorruptShardError(f"{self.name}: shard file {path} is missing (listed in the manifest)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptShardError(
                f"{self.name}: shard file {path} has {size} bytes but the manifest records {entry['bytes']}: it is "
                "truncated or was overwritten; delete it and resume cache-logits to rewrite it"
            )
        if checksum and i not in self._verified:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise CorruptShardError(
                    f"{self.name}: shard file {path} fails its checksum (sha256 {digest[:16]}... != manifest "
                    f"{entry['sha256'][:16]}...): it is corrupted; delete it and resume cache-logits to rewrite it"
                )
            self._verified.add(i)

    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest (reads the whole store)."""
        for i in range(len(self.shards)):
            self._check_shard(i, checksum=True)

    def _handle(self, i: int):
        if i not in self._handles:
            self._check_shard(i, checksum=False)
            try:
                self._handles[i] = safe_open(str(self._shard_path(i)), framework="pt")
            except SafetensorError as e:
                raise CorruptShardError(f"{self.name}: shard file {self._shard_path(i)} cannot be read: {e}") from e
        return self._handles[i]

    def _get(self, i: int, key: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        try:
            h = self._handle(i)
            return h.get_tensor(key) if start is None else h.get_slice(key)[start:stop]
        except SafetensorError as e:
            raise CorruptShardError(f"{self.name}: shard file {self._shard_path(i)}: cannot read {key!r}: {e}") from e

    # ----- lookup ---------------------------------------------------------------------------------------------
    def _build_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, shard, local = [], [], []
        for i in range(len(self.shards)):
            sids = self._get(i, "sample_ids").numpy()
            self._offsets[i] = self._get(i, "row_offsets").numpy()
            ids.append(sids)
            shard.append(np.full(len(sids), i, dtype=np.int64))
            local.append(np.arange(len(sids), dtype=np.int64))
        all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_ids, kind="stable")
        return all_ids[order], np.concatenate(shard)[order], np.concatenate(local)[order]

    def sample_ids(self) -> torch.Tensor:
        """All sample ids in the store, sorted."""
        if self._index is None:
            self._index = self._build_index()
        return torch.from_numpy(self._index[0].copy())

    def locate(self, sample_ids: Sequence[int] | torch.Tensor) -> list[tuple[int, int]]:
        """(shard index, sample index inside the shard) for each id; raises naming the ids that are missing."""
        if self._index is None:
            self._index = self._build_index()
        sorted_ids, shard, local = self._index
        query = np.asarray(torch.as_tensor(sample_ids).cpu().numpy(), dtype=np.int64).reshape(-1)
        pos = np.clip(np.searchsorted(sorted_ids, query), 0, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[pos] == query) if len(sorted_ids) else np.zeros(len(query), dtype=bool)
        if not found.all():
            missing = query[~found].tolist()
            raise LogitStoreError(
                f"{self.name} has no targets for sample_id(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} "
                f"({len(missing)} of {len(query)} in this batch); the store covers {len(sorted_ids)} samples. The "
                "dataset changed or is not the one the store was written for: re-run cache-logits on it"
            )
        return [(int(shard[p]), int(local[p])) for p in pos]

    def rows(self, sample_id: int) -> dict[str, torch.Tensor]:
        """The stored rows of one sample: positions (n,), ids (n, w), logprobs (n, w), and tail_logprobs (n,)
        or weights (n, w) (fp32, counts / num_draws). Values keep the stored dtype except weights."""
        return self.rows_many([sample_id])[0]

    def rows_many(self, sample_ids: Sequence[int] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for shard, local in self.locate(sample_ids):
            if self.verify_mode == "checksum":
                self._check_shard(shard, checksum=True)
            a, b = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
            rec = {key: self._get(shard, key, a, b) for key in ("positions", "ids", "logprobs")}
            if self.mode == "topk":
                rec["tail_logprobs"] = self._get(shard, "tail_logprobs", a, b)
            else:
                rec["weights"] = self._get(shard, "counts", a, b).float() / float(self.num_draws)
            out.append(rec)
        return out


def pad_width(t: torch.Tensor, width: int, value) -> torch.Tensor:
    """Right-pad the last dim of ``t`` to ``width`` with ``value``."""
    if t.shape[-1] == width:
        return t
    pad = torch.full((*t.shape[:-1], width - t.shape[-1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=-1)
