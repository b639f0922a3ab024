"""Reading a finished logit store: rows looked up by sample id (format: ``format.py``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from .fingerprint import compare_fingerprints
from .format import MANIFEST, CorruptShardError, LogitStoreError, read_manifest, sha256_file

# Stores already verified in this process: a run's pre-flight and its trainer open the same store, and reading every
# shard twice would double the cost of the check on a big store.
_VERIFIED_STORES: set[tuple] = set()
PROGRESS_BYTES = 256 << 20  # a progress bar for stores above 256 MB


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


REPAIR = (
    "re-run `llm-distill cache-logits` with the recipe that wrote the store: it re-verifies every shard and "
    "rewrites the damaged ones"
)


class LogitStore:
    """Read-only view of a finished store; rows are looked up by ``sample_id``.

    A store is trusted only when it proves it: opening checks every shard's size and sha256 against the manifest
    (with a progress bar on big stores; once per process and store), so a damaged shard is found before training, not
    when first read. The sample-id index (8 bytes per sample per shard) is built on the first lookup; shards are
    memory-mapped through ``safe_open`` and only the rows asked for are read.

    Args:
        path: the store directory.
        expected: a fingerprint (see ``fingerprint.make_fingerprint``); every field it sets must match.
        verify: ``"checksum"`` (every shard's sha256, at open), ``"size"`` (file sizes at open: truncation is
            caught, not a flipped byte), or ``"none"``.
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
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            partial = sorted(p.name for p in self.path.glob("manifest.rank*.json")) if self.path.is_dir() else []
            state = f"only partial manifests {partial} exist: the writer did not finish" if partial else "not found"
            raise LogitStoreError(
                f"{self.name}: {manifest_path} {state}; run (or resume) cache-logits to write the store"
            )
        self.manifest = read_manifest(manifest_path)
        self.manifest_digest = sha256_file(manifest_path)
        if not self.manifest.get("complete"):
            raise LogitStoreError(f"{self.name}: manifest says the store is incomplete; resume cache-logits")
        if expected is not None:
            self.check_fingerprint(expected)
        self._handles: dict[int, object] = {}
        self._verified: set[int] = set()
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._offsets: dict[int, np.ndarray] = {}
        if verify != "none":
            self.verify(checksum=verify == "checksum")

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
        repair = REPAIR
        if not path.is_file():
            raise CorruptShardError(f"{self.name}: shard file {path} is missing (listed in the manifest); {repair}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptShardError(
                f"{self.name}: shard file {path} has {size} bytes but the manifest records {entry['bytes']}: it is "
                f"truncated or was overwritten; {repair}"
            )
        if checksum and i not in self._verified:
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise CorruptShardError(
                    f"{self.name}: shard file {path} fails its checksum (sha256 {digest[:16]}... != manifest "
                    f"{entry['sha256'][:16]}...): it is corrupted; {repair}"
                )
            self._verified.add(i)

    def verify(self, *, checksum: bool = True) -> None:
        """Check every shard's size (and sha256) against the manifest; once per process for an unchanged store."""
        # Keyed by every shard's size and mtime too: a file changed since it was verified is verified again.
        stats = tuple(_stat(self._shard_path(i)) for i in range(len(self.shards)))
        key = (str(self.path.resolve()), self.manifest_digest, checksum, stats)
        if key in _VERIFIED_STORES:
            self._verified.update(range(len(self.shards)) if checksum else ())
            return
        total = sum(int(e["bytes"]) for e in self.shards)
        shown = checksum and total > PROGRESS_BYTES
        with tqdm(total=total, unit="B", unit_scale=True, desc="verify logit store", disable=not shown) as bar:
            for i, entry in enumerate(self.shards):
                self._check_shard(i, checksum=checksum)
                bar.update(int(entry["bytes"]))
        _VERIFIED_STORES.add(key)

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

    def rows_many(self, sample_ids: Sequence[int] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The stored rows of each sample: positions (n,), ids (n, w), logprobs (n, w), and tail_logprobs (n,)
        or weights (n, w) (fp32, counts / num_draws). Values keep the stored dtype except weights."""
        out = []
        for shard, local in self.locate(sample_ids):
            a, b = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
            rec = {key: self._get(shard, key, a, b) for key in ("positions", "ids", "logprobs")}
            if self.mode == "topk":
                rec["tail_logprobs"] = self._get(shard, "tail_logprobs", a, b)
            else:
                rec["weights"] = self._get(shard, "counts", a, b).float() / float(self.num_draws)
            out.append(rec)
        return out
