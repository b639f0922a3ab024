"""Crash-safe, resumable writing of a logit store (format: ``format.py``).

Each process keeps its own progress manifest (``manifest.rank{r}.json``), rewritten atomically after every shard
it finishes; nothing is ever appended in place. A restarted run reads every progress manifest, re-verifies the
listed shards (size + sha256) and only writes the missing ones. Because a shard's content depends only on its
index (fixed dataset rows, fixed batching inside it, per-sample sampling seeds), a resumed store is byte-identical
to an uninterrupted one. At the end rank 0 merges the progress manifests into ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .fingerprint import FINGERPRINT_FIELDS, compare_fingerprints
from .format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    LogitStoreError,
    atomic_write,
    encode_shard,
    rank_manifest_name,
    read_manifest,
    sha256_file,
    shard_name,
    write_json_atomic,
)

logger = logging.getLogger(__name__)


class StoreWriter:
    """Writes the shards of one process and keeps its progress manifest.

    Args:
        output_dir: store directory (created if needed).
        fingerprint: the full fingerprint of what is being cached (every field of ``FINGERPRINT_FIELDS``).
        settings: writer settings that change shard contents without being part of the fingerprint
            (shard_size, seed, the order of the sample ids); a resume must use the same ones.
        rank / world_size: this process and how many write together.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        fingerprint: Mapping,
        settings: Mapping,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        missing = [f for f in FINGERPRINT_FIELDS if f not in fingerprint]
        if missing:
            raise ValueError(f"fingerprint lacks field(s) {missing}; build it with make_fingerprint(...)")
        self.dir = Path(output_dir)
        self.fingerprint, self.settings = dict(fingerprint), dict(settings)
        self.rank, self.world_size = rank, world_size
        self.entries: dict[int, dict] = {}

    # ----- state on disk --------------------------------------------------------------------------------------
    def _manifests(self) -> list[Path]:
        final = [self.dir / MANIFEST] if (self.dir / MANIFEST).is_file() else []
        return final + sorted(self.dir.glob("manifest.rank*.json"))

    def _check_compatible(self, path: Path, manifest: Mapping) -> None:
        where = f"{path} (existing store in output_dir)"
        compare_fingerprints(
            manifest["fingerprint"], {f: v for f, v in self.fingerprint.items() if v is not None}, where=where
        )
        # compare_fingerprints skips fields the run leaves unset; a writer must not mix stores that differ there.
        for field in FINGERPRINT_FIELDS:
            if self.fingerprint[field] is None and manifest["fingerprint"].get(field) is not None:
                raise LogitStoreError(
                    f"{where} was written with {field}={manifest['fingerprint'][field]!r} but this run has no "
                    f"{field}; resume with the same value, or pass overwrite=True to start over"
                )
        for key, value in self.settings.items():
            if manifest.get("settings", {}).get(key) != value:
                raise LogitStoreError(
                    f"{where} was written with {key}={manifest.get('settings', {}).get(key)!r} but this run uses "
                    f"{key}={value!r}; resume with the same setting, or pass overwrite=True to start over"
                )

    def validate_existing(self) -> bool:
        """Check that whatever is already in ``output_dir`` belongs to this run (read-only, every rank may call
        it). Returns True when a complete store is already there."""
        complete = False
        for path in self._manifests():
            manifest = read_manifest(path)
            self._check_compatible(path, manifest)
            complete = complete or (path.name == MANIFEST and bool(manifest.get("complete")))
        return complete

    def damaged_shards(self) -> list[int]:
        """Indices of the shards a complete ``manifest.json`` lists whose file is missing, resized or fails its
        sha256 (read-only)."""
        manifest = read_manifest(self.dir / MANIFEST)
        return [e["index"] for e in manifest["shards"] if not self._intact(e)]

    def reopen(self) -> None:
        """Mark a complete store incomplete again (rank 0) before damaged shards are rewritten: until it is finished
        anew, readers refuse it instead of reading a shard that is being replaced."""
        manifest = read_manifest(self.dir / MANIFEST)
        write_json_atomic(self.dir / MANIFEST, {**manifest, "complete": False})

    def clear(self) -> None:
        """Delete a previous store's files in ``output_dir`` (rank 0, for ``overwrite=True``)."""
        for pattern in ("manifest*.json", "shard-*.safetensors", ".shard-*.tmp-*", ".manifest*.tmp-*"):
            for p in self.dir.glob(pattern):
                p.unlink()

    def remove_stale_temporaries(self) -> None:
        """Temporary files left by a killed writer (rank 0, before anyone writes)."""
        for pattern in (".shard-*.tmp-*", ".manifest*.tmp-*"):
            for p in self.dir.glob(pattern):
                p.unlink(missing_ok=True)

    def _listed(self) -> dict[int, dict]:
        """Shard entries of every manifest; a process's progress manifest (newer: a rewrite) wins over
        ``manifest.json``."""
        listed: dict[int, dict] = {}
        for path in reversed(self._manifests()):  # progress manifests first, manifest.json last
            for entry in read_manifest(path)["shards"]:
                listed.setdefault(entry["index"], entry)
        return listed

    def completed(self) -> dict[int, dict]:
        """Shard entries listed by any manifest (not yet re-verified; see ``is_done``)."""
        done = self._listed()
        own = self.dir / rank_manifest_name(self.rank)
        if own.is_file():
            # Keep this rank's earlier entries in its rewritten progress file, so a second crash loses nothing.
            self.entries = {e["index"]: e for e in read_manifest(own)["shards"]}
        return done

    def _intact(self, entry: Mapping) -> bool:
        path = self.dir / entry["file"]
        return path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]

    def is_done(self, entry: Mapping | None) -> bool:
        """True when the shard file of ``entry`` exists with the recorded size and sha256."""
        if entry is None:
            return False
        if not self._intact(entry):
            logger.warning("shard %s is listed as written but is missing or damaged; rewriting it", entry["file"])
            return False
        return True

    # ----- writing --------------------------------------------------------------------------------------------
    def _header(self, shards: list[dict], complete: bool) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": complete,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "shards": shards,
        }

    def write_shard(
        self, index: int, tensors: dict[str, torch.Tensor], *, num_samples: int, num_rows: int, vocab_size: int
    ) -> dict:
        """Atomically write shard ``index`` and record it (size, sha256) in this rank's progress manifest."""
        self.dir.mkdir(parents=True, exist_ok=True)
        metadata = {"format": FORMAT, "index": str(index), "mode": str(self.fingerprint["mode"])}
        data = encode_shard(tensors, metadata)
        name = shard_name(index, self.rank)
        atomic_write(self.dir / name, data)
        entry = {
            "index": index,
            "file": name,
            "rank": self.rank,
            "num_samples": num_samples,
            "num_rows": num_rows,
            "vocab_size": vocab_size,
            "width": int(tensors["ids"].shape[-1]),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self.entries[index] = entry
        shards = [self.entries[i] for i in sorted(self.entries)]
        write_json_atomic(self.dir / rank_manifest_name(self.rank), self._header(shards, complete=False))
        return entry

    def finalize(self, num_shards: int) -> dict:
        """Merge every progress manifest into ``manifest.json`` (rank 0, after all ranks finished)."""
        merged = self._listed()
        absent = sorted(set(range(num_shards)) - set(merged))
        if absent:
            raise LogitStoreError(
                f"cannot finish the store in {self.dir}: shard(s) {absent[:10]} were not written by any process; "
                "re-run cache-logits to resume"
            )
        shards = [merged[i] for i in range(num_shards)]
        vocab = {e["vocab_size"] for e in shards}
        if len(vocab) != 1:
            raise LogitStoreError(f"shards in {self.dir} disagree on the teacher's vocabulary size: {sorted(vocab)}")
        manifest = self._header(shards, complete=True)
        manifest.update(
            vocab_size=vocab.pop(),
            num_examples=sum(e["num_samples"] for e in shards),
            num_rows=sum(e["num_rows"] for e in shards),
            bytes=sum(e["bytes"] for e in shards),
        )
        write_json_atomic(self.dir / MANIFEST, manifest)
        for path in self.dir.glob("manifest.rank*.json"):
            path.unlink()
        listed = {e["file"] for e in shards}
        for path in self.dir.glob("shard-*.safetensors"):
            if path.name not in listed:  # a damaged shard rewritten by another process under another name
                path.unlink()
        return manifest


__all__ = ["StoreWriter", "atomic_write"]
