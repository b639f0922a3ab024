"""Sequence-level KD data: a teacher's completions of a set of prompts, written once to a dataset on disk.

``llm-distill generate RECIPE`` calls ``generate_completions``; training then reads ``completions.jsonl`` as
prompt / completion data (``dataset.task: prompt_completion``; its ``prompt_ids`` / ``completion_ids`` are used as they
are, so the student trains on exactly the teacher's tokens). Layout of the output folder::

    manifest.json                  format, fingerprint, settings, one entry per shard (rows, bytes, sha256)
    shard-00000-rank0.jsonl        ``shard_size`` consecutive prompts, written by process ``rank``
    manifest.rank0.json            per-process progress while writing; merged into manifest.json
    completions.jsonl              every row in dataset order: sample_id, prompt_ids, completion_ids, and their text

Like the logit store (whose file helpers this reuses: atomic writes, content hashes, per-process progress files),
a folder written for one teacher / tokenizer / prompt set / generation settings refuses to be resumed or completed
by another, naming the field; an interrupted run resumes at the first missing shard. Every row is sampled with its
own seed (run seed, sample id), so which process or batch wrote it does not change it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .._version import __version__
from ..data import DistillationCollator
from ..processes import process_info
from ..teacher.store.fingerprint import hash_state_dict, hash_tokenizer
from ..teacher.store.format import atomic_write, rank_manifest_name, sha256_file, write_json_atomic
from .batch import batch_prompts
from .generation import GenerationBackend, SamplingSettings, TransformersBackend, eos_ids_of, row_seed

logger = logging.getLogger(__name__)

FORMAT = "llm_distill.completions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_FILE = "completions.jsonl"
_SALT = 0x5E9D  # keeps these samples' streams apart from the trainer's


class CompletionsMismatchError(ValueError):
    """A completions folder was written for another teacher, tokenizer, prompt set or generation settings."""


def shard_file(index: int, rank: int) -> str:
    return f"shard-{index:05d}-rank{rank}.jsonl"


def hash_prompts(prompts: list[list[int]], sample_ids: list[int]) -> str:
    """sha256 of the prompts' token ids and sample ids, in order."""
    h = hashlib.sha256()
    for sid, prompt in zip(sample_ids, prompts):
        h.update(json.dumps([sid, prompt]).encode())
    return h.hexdigest()


def completions_fingerprint(
    teacher: nn.Module, tokenizer, prompts, sample_ids, settings: SamplingSettings, *, teacher_id, seed: int
) -> dict:
    """What the completions depend on: the teacher's weights, the tokenizer, the prompts and how they are sampled."""
    return {
        "teacher_id": teacher_id,
        "teacher_weights_hash": hash_state_dict(teacher),
        "tokenizer_hash": hash_tokenizer(tokenizer),
        "prompts_hash": hash_prompts(prompts, sample_ids),
        "num_prompts": len(prompts),
        "max_new_tokens": settings.max_new_tokens,
        "generation_temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "top_k": settings.top_k,
        "seed": seed,
        "package_version": __version__,
    }


class _Folder:
    """The manifests of one completions folder: compatibility checks, finished shards, merging."""

    def __init__(self, path: Path, fingerprint: dict, settings: dict, rank: int):
        self.path, self.fingerprint, self.settings, self.rank = path, fingerprint, settings, rank
        self.entries: dict[int, dict] = {}

    def manifests(self) -> list[Path]:
        final = [self.path / MANIFEST] if (self.path / MANIFEST).is_file() else []
        return final + sorted(self.path.glob("manifest.rank*.json"))

    def read(self, path: Path) -> dict:
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CompletionsMismatchError(f"{path} is not valid JSON ({e}); the folder is damaged") from e
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise CompletionsMismatchError(
                f"{path} is not a version-{FORMAT_VERSION} completions manifest; choose an empty generate.output_dir"
            )
        where = f"{path.parent} (generate.output_dir)"
        for key, value in {**self.fingerprint, **self.settings}.items():
            stored = {**manifest["fingerprint"], **manifest["settings"]}.get(key)
            if stored != value:
                raise CompletionsMismatchError(
                    f"{where} was written with {key}={stored!r} but this run has {key}={value!r}; use another "
                    "output_dir, or re-run with the same setting to resume"
                )
        return manifest

    def check_existing(self) -> bool:
        """Refuse a folder of another run; True when it is complete."""
        complete = False
        for path in self.manifests():
            manifest = self.read(path)
            complete = complete or (path.name == MANIFEST and bool(manifest.get("complete")))
        return complete

    def finished(self) -> dict[int, dict]:
        """Shards whose files exist with the recorded size and sha256."""
        done = {}
        for path in self.manifests():
            for entry in self.read(path)["shards"]:
                file = self.path / entry["file"]
                if file.is_file() and file.stat().st_size == entry["bytes"] and sha256_file(file) == entry["sha256"]:
                    done.setdefault(entry["index"], entry)
        own = self.path / rank_manifest_name(self.rank)
        if own.is_file():
            self.entries = {e["index"]: e for e in self.read(own)["shards"] if e["index"] in done}
        return done

    def header(self, shards: list[dict], complete: bool) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": complete,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "shards": shards,
        }

    def write_shard(self, index: int, rows: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        name = shard_file(index, self.rank)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / name, data)
        self.entries[index] = {
            "index": index,
            "file": name,
            "rank": self.rank,
            "rows": len(rows),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        shards = [self.entries[i] for i in sorted(self.entries)]
        write_json_atomic(self.path / rank_manifest_name(self.rank), self.header(shards, complete=False))

    def finalize(self, num_shards: int) -> None:
        done = self.finished()
        missing = sorted(set(range(num_shards)) - set(done))
        if missing:
            raise RuntimeError(f"shards {missing[:10]} of {self.path} were not written; re-run generate to resume")
        shards = [done[i] for i in range(num_shards)]
        with open(self.path / f".{DATA_FILE}.tmp", "wb") as out:
            for entry in shards:
                out.write((self.path / entry["file"]).read_bytes())
        os.replace(self.path / f".{DATA_FILE}.tmp", self.path / DATA_FILE)
        manifest = self.header(shards, complete=True)
        manifest.update(num_rows=sum(e["rows"] for e in shards), data_file=DATA_FILE)
        write_json_atomic(self.path / MANIFEST, manifest)
        for path in self.path.glob("manifest.rank*.json"):
            path.unlink()


def generate_completions(
    teacher: nn.Module,
    dataset,
    tokenizer,
    *,
    output_dir: str | os.PathLike,
    settings: SamplingSettings,
    teacher_id: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    shard_size: int = 256,
    backend: GenerationBackend | None = None,
    collator: Callable[[list[dict]], dict] | None = None,
    accelerator=None,
) -> Path:
    """Sample the teacher's completion of every prompt of ``dataset`` and write them to ``output_dir``.

    Args:
        teacher: the model that writes the completions, on its device.
        dataset: tokenized prompt rows (``dataset.task: prompt_completion`` or instruction rows) with ``sample_id``;
            each row's prompt is its first ``prompt_length`` tokens (any completion it has is ignored).
        settings: how completions are sampled (``generation_temperature`` 0 = greedy).
        seed: with each row's sample id, the seed of that row's sample.
        batch_size / shard_size: prompts per generate call / per shard file (the unit of resumption).
        accelerator: several processes write shards r, r + N, ...; rank 0 merges (None: torch.distributed if
            initialised, else one process).
    Returns:
        the folder; ``completions.jsonl`` in it is the dataset to train on.
    """
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"generate.batch_size={batch_size} and generate.shard_size={shard_size} must be >= 1")
    if len(dataset) == 0:
        raise ValueError("there are no prompts to generate completions for")
    rank, world, barrier = process_info(accelerator)
    collator = collator or DistillationCollator(tokenizer)
    rows = [dataset[i] for i in range(len(dataset))]
    prompts, sample_ids = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start : start + 256]
        prompts += batch_prompts(collator(chunk))
        sample_ids += [int(r["sample_id"]) for r in chunk]
    if len(set(sample_ids)) != len(sample_ids):
        raise ValueError("sample_id values are not unique; every prompt's seed and row is keyed by its sample id")
    fingerprint = completions_fingerprint(
        teacher, tokenizer, prompts, sample_ids, settings, teacher_id=teacher_id, seed=seed
    )
    folder = _Folder(Path(output_dir), fingerprint, {"shard_size": shard_size, "batch_size": batch_size}, rank)
    if rank == 0:
        folder.path.mkdir(parents=True, exist_ok=True)
    barrier()
    if folder.check_existing():
        logger.info("completions in %s are already complete; nothing to do", folder.path)
        return folder.path
    if backend is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        backend = TransformersBackend(eos_ids_of(tokenizer, teacher), pad, vocab_size=len(tokenizer))
    num_shards = math.ceil(len(prompts) / shard_size)
    done = folder.finished()
    for index in range(rank, num_shards, world):
        if index in done:
            continue
        lo, hi = index * shard_size, min(len(prompts), (index + 1) * shard_size)
        out = []
        for start in range(lo, hi, batch_size):
            stop = min(hi, start + batch_size)
            seeds = [row_seed(seed, _SALT, sid) for sid in sample_ids[start:stop]]
            completions = backend.generate(teacher, prompts[start:stop], seeds, settings)
            for sid, prompt, completion in zip(sample_ids[start:stop], prompts[start:stop], completions):
                out.append(
                    {
                        "sample_id": sid,
                        "prompt_ids": prompt,
                        "completion_ids": completion,
                        "prompt": tokenizer.decode(prompt),
                        "completion": tokenizer.decode(completion),
                    }
                )
        folder.write_shard(index, out)
        logger.info("rank %d wrote completions shard %d/%d (%d prompts)", rank, index + 1, num_shards, len(out))
    barrier()
    if rank == 0:
        folder.finalize(num_shards)
    barrier()
    return folder.path
