"""Run a teacher once over a tokenized dataset and write its sparse targets to a logit store.

``cache_logits`` takes already-built objects (model, dataset, collator, tokenizer, accelerator); the CLI verb
``llm-distill cache-logits RECIPE.yaml`` builds them from a recipe and calls it. Under ``accelerate launch`` with
N processes, process r writes shards r, r+N, r+2N, ... (its rank is in the file name) and rank 0 merges the
manifest after a barrier.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...checks import NonFiniteError
from ...losses.divergences import LOG_FLOOR, check_temperature
from ...processes import process_info
from ...tasks import TASKS, torch_dtype
from ..live import LiveTeacher
from .fingerprint import hash_dataset, hash_model_files, make_fingerprint, teacher_id_of
from .format import MODES, STORE_DTYPES, counted_mask, first_attended
from .writer import StoreWriter

logger = logging.getLogger(__name__)

# Rows of V logits turned into targets at a time: bounds the fp32 (rows, V) temporaries (256 x 152k x 4 B = 156 MB).
ROW_CHUNK = 256


def topk_targets(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k targets of ``(R, V)`` logits at ``temperature``.

    Returns ids ``(R, k)`` int32 (most likely first), logprobs ``(R, k)`` fp32 = log_softmax(z / T) at those ids
    over the full vocabulary, and tail ``(R,)`` fp32 = log(1 - sum of the top-k probabilities). The tail is a
    logsumexp over the entries *not* chosen, not log1p(-sum p): when the top-k hold 99.99 % of the mass the latter
    cancels catastrophically. An empty tail (k = V) is floored at LOG_FLOOR.
    """
    ids, lps, tails = [], [], []
    for chunk in logits.split(ROW_CHUNK):
        logp = F.log_softmax(chunk.float() / temperature, dim=-1)
        top_lp, top_id = logp.topk(k, dim=-1)
        rest = logp.scatter(-1, top_id, float("-inf"))
        tails.append(torch.logsumexp(rest, dim=-1).clamp(min=LOG_FLOOR))
        ids.append(top_id.to(torch.int32))
        lps.append(top_lp.clamp(min=LOG_FLOOR))
    return torch.cat(ids), torch.cat(lps), torch.cat(tails)


def sampled_targets(
    logits: torch.Tensor, num_draws: int, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num_draws`` ids per row of ``(R, V)`` logits from softmax(z / T), with replacement.

    Returns ids ``(R, num_draws)`` int32 (unique ids first, ascending, then padding id 0), logprobs ``(R, num_draws)``
    fp32 teacher log-probabilities at those ids (LOG_FLOOR on padding) and counts ``(R, num_draws)`` int32 (0 on
    padding). weights = counts / num_draws sum to 1 per row.
    """
    ids, lps, cnts = [], [], []
    for chunk in logits.split(ROW_CHUNK):
        logp = F.log_softmax(chunk.float() / temperature, dim=-1)
        draws = torch.multinomial(logp.exp(), num_draws, replacement=True, generator=generator)
        s = draws.sort(dim=-1).values
        is_new = torch.ones_like(s, dtype=torch.bool)
        is_new[:, 1:] = s[:, 1:] != s[:, :-1]
        slot = is_new.long().cumsum(-1) - 1  # slot of each draw among the row's unique ids
        uniq = torch.zeros_like(s).scatter_(1, slot, s)  # duplicates write the same value to the same slot
        count = torch.zeros_like(s).scatter_add_(1, slot, torch.ones_like(s))
        used = count > 0
        ids.append(torch.where(used, uniq, 0).to(torch.int32))
        floor = torch.full_like(logp[:, :1], LOG_FLOOR)
        lps.append(torch.where(used, logp.gather(-1, uniq), floor).clamp(min=LOG_FLOOR))
        cnts.append(count.to(torch.int32))
    return torch.cat(ids), torch.cat(lps), torch.cat(cnts)


def _sample_seed(seed: int, sample_id: int) -> int:
    # Per-sample seeds: the draws of a sample do not depend on which shard, batch or process computed it.
    return (seed * 0x9E3779B97F4A7C15 + sample_id * 0xBF58476D1CE4E5B9) % (2**63 - 1)


def _column(dataset, name: str) -> list:
    if hasattr(dataset, "column_names"):  # datasets.Dataset: read the column without decoding every row
        if name not in dataset.column_names:
            raise ValueError(f"the dataset has no {name!r} column (columns: {dataset.column_names})")
        return [int(x) for x in dataset[name]]
    return [int(dataset[i][name]) for i in range(len(dataset))]


def _batch_rows(batch: Mapping, logits: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Counted rows of one batch: logits ``(R, V)``, relative positions ``(R,)`` and rows per sample."""
    mask = counted_mask(batch, task).to(logits.device)
    if task == "sequence_classification":
        return logits, torch.zeros(logits.shape[0], dtype=torch.int32), [1] * logits.shape[0]
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"labels {tuple(mask.shape)} and teacher logits {tuple(logits.shape)} disagree on (B, S)")
    where = mask.nonzero()  # (R, 2), row-major: samples in order, positions ascending
    positions = where[:, 1] - first_attended(batch).to(logits.device)[where[:, 0]]
    return logits[where[:, 0], where[:, 1]], positions.to(torch.int32).cpu(), mask.sum(1).tolist()


def cache_logits(
    teacher_model: nn.Module,
    dataset,
    collator: Callable[[list[dict]], dict],
    *,
    output_dir: str | os.PathLike,
    k: int,
    temperature: float,
    mode: str = "topk",
    num_samples: int = 64,
    batch_size: int = 8,
    shard_size: int = 1024,
    dtype: str = "float16",
    task: str = "causal_lm",
    teacher_id: str,
    tokenizer=None,
    tokenizer_hash: str | None = None,
    dataset_fingerprint: str | None = None,
    max_length: int | None = None,
    accelerator=None,
    seed: int = 0,
    full_weights_hash: bool = False,
    overwrite: bool = False,
    vocab_size: int | None = None,
) -> Path:
    """Write the teacher's top-k (or sampled) targets for every row of ``dataset`` to ``output_dir``.

    Args:
        teacher_model: the teacher, already on its device (run under ``no_grad`` in eval mode).
        dataset: indexable rows (``datasets.Dataset`` or a list of dicts) with input_ids, attention_mask, labels
            (not needed for sequence classification) and a unique int ``sample_id``.
        collator: list of rows -> batch dict of tensors (pads; must keep labels aligned with input_ids).
        k: top-k width (``mode="topk"``; for classification k may equal num_labels).
        temperature: T of the stored log-probabilities; training must use the same T.
        mode: ``"topk"`` (ids + logprobs + tail mass) or ``"sampled"`` (``num_samples`` draws per position,
            stored as unique ids, counts and logprobs).
        shard_size: dataset rows per shard; the unit of resumption.
        dtype: float16 | bfloat16 | float32 for stored log-probabilities.
        task: causal_lm | masked_lm | sequence_classification (decides which positions are counted).
        teacher_id, tokenizer (or tokenizer_hash), dataset_fingerprint (default: ``hash_dataset(dataset)``, a
            content hash of sample_id/input_ids/labels), max_length: recorded in the fingerprint readers check.
        accelerator: an ``accelerate.Accelerator`` (or None: torch.distributed if initialised, else 1 process).
        seed: base seed of the sampled mode (each sample draws from its own generator).
        overwrite: replace a store of another fingerprint in ``output_dir`` instead of refusing.
        vocab_size: the tokenizer's real size for token tasks: the teacher's padded embedding rows past it are not
            tokens and are cut before the top-k, as the live path cuts them.
    Returns:
        the store directory. An interrupted call, re-run with the same arguments, resumes where it stopped; a call on
        a complete store re-verifies every shard and rewrites any that is missing or damaged.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; expected one of {', '.join(MODES)}")
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not supported; expected one of {', '.join(TASKS)}")
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; expected one of {', '.join(STORE_DTYPES)}")
    check_temperature(temperature)
    if mode == "topk" and k < 1:
        raise ValueError(f"k={k} must be >= 1")
    if mode == "sampled" and not 1 <= num_samples <= 32767:
        raise ValueError(f"num_samples={num_samples} must be in [1, 32767] draws per position")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size={shard_size} and batch_size={batch_size} must be >= 1")
    if dataset_fingerprint is None:
        # Content hash of sample_id/input_ids/labels: what the trainer can recompute from its own dataset.
        dataset_fingerprint = hash_dataset(dataset)
    if tokenizer is None and tokenizer_hash is None:
        raise ValueError("pass tokenizer (or tokenizer_hash): the store records which vocabulary its ids belong to")

    rank, world, barrier = process_info(accelerator)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; there is nothing to cache")
    sample_ids = _column(dataset, "sample_id")
    if len(set(sample_ids)) != len(sample_ids):
        raise ValueError("sample_id values are not unique; the store looks rows up by sample_id")
    fingerprint = make_fingerprint(
        teacher_id=teacher_id_of(teacher_id),
        teacher_files_hash=hash_model_files(teacher_id),
        teacher=teacher_model,
        tokenizer=tokenizer,
        tokenizer_hash=tokenizer_hash,
        dataset_fingerprint=dataset_fingerprint,
        sample_ids=sample_ids,
        task=task,
        max_length=max_length,
        temperature=temperature,
        k=k if mode == "topk" else None,
        mode=mode,
        num_draws=num_samples if mode == "sampled" else None,
        dtype=dtype,
        full_weights_hash=full_weights_hash,
    )
    # Settings change shard contents (which rows, how padded, which draws) without being part of what a reader
    # checks; a resume must use the same ones to reproduce the uninterrupted store.
    settings = {
        "shard_size": shard_size,
        "seed": seed,
        "batch_size": batch_size,
        "sample_id_order": _order_hash(sample_ids),
    }
    writer = StoreWriter(output_dir, fingerprint, settings, rank=rank, world_size=world)
    out = Path(output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            writer.clear()
        writer.remove_stale_temporaries()
    barrier()
    if writer.validate_existing():
        damaged = writer.damaged_shards()
        if not damaged:
            logger.info("logit store %s is already complete and every shard checks out; nothing to do", out)
            return out
        barrier()  # every process has read the manifest before rank 0 reopens it
        if rank == 0:
            logger.warning("logit store %s: shard(s) %s are missing or damaged; rewriting them", out, damaged)
            writer.reopen()
        barrier()

    teacher = LiveTeacher(teacher_model)
    num_shards = math.ceil(len(dataset) / shard_size)
    done = writer.completed()
    for index in range(rank, num_shards, world):
        if writer.is_done(done.get(index)):
            continue
        rows = range(index * shard_size, min(len(dataset), (index + 1) * shard_size))
        tensors, n_rows, vocab = _compute_shard(
            teacher,
            dataset,
            collator,
            rows,
            k=k,
            temperature=temperature,
            mode=mode,
            num_draws=num_samples,
            batch_size=batch_size,
            dtype=torch_dtype(dtype),
            task=task,
            seed=seed,
            vocab_size=None if task == "sequence_classification" else vocab_size,
        )
        writer.write_shard(index, tensors, num_samples=len(rows), num_rows=n_rows, vocab_size=vocab)
        logger.info("rank %d wrote shard %d/%d (%d rows)", rank, index + 1, num_shards, n_rows)
    barrier()
    if rank == 0:
        writer.finalize(num_shards)
    barrier()
    return out


def _order_hash(sample_ids: Sequence[int]) -> str:
    return hashlib.sha256(torch.tensor(sample_ids, dtype=torch.int64).numpy().tobytes()).hexdigest()


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _compute_shard(
    teacher: LiveTeacher,
    dataset,
    collator,
    rows: range,
    *,
    k: int,
    temperature: float,
    mode: str,
    num_draws: int,
    batch_size: int,
    dtype: torch.dtype,
    task: str,
    seed: int,
    vocab_size: int | None,
):
    """Targets for dataset rows ``rows`` (one shard), as the tensors of a shard file."""
    device = _device_of(teacher.model)
    sids, offsets, positions, ids, lps, extra = [], [0], [], [], [], []
    vocab = None
    for start in range(rows.start, rows.stop, batch_size):
        features = [dataset[j] for j in range(start, min(rows.stop, start + batch_size))]
        batch_ids = [int(f["sample_id"]) for f in features]
        batch = collator(features)
        if "sample_id" in batch and torch.as_tensor(batch["sample_id"]).tolist() != batch_ids:
            raise ValueError("the collator reordered or changed sample_id; it must keep rows in order")
        batch = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
        logits = teacher(batch).logits
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        vocab = logits.shape[-1]
        if mode == "topk" and k > vocab:
            raise ValueError(f"k={k} exceeds the teacher's output size {vocab} (vocabulary or num_labels)")
        row_logits, pos, per_sample = _batch_rows(batch, logits, task)
        if not bool(torch.isfinite(row_logits).all()):
            raise NonFiniteError(
                f"the teacher's logits hold NaN or inf at counted positions of sample_id(s) {batch_ids[:8]}; nothing "
                "of that shard was written. Check the teacher's weights (a NaN in a weight file) and its dtype"
            )
        if mode == "topk":
            i, lp, tail = topk_targets(row_logits, k, temperature)
            extra.append(tail)
        else:
            parts = [], [], []
            for sid, chunk in zip(batch_ids, row_logits.split(per_sample)):
                if chunk.shape[0] == 0:
                    continue
                gen = torch.Generator(device=row_logits.device).manual_seed(_sample_seed(seed, sid))
                for store, t in zip(parts, sampled_targets(chunk, num_draws, temperature, gen)):
                    store.append(t)
            i, lp, cnt = (torch.cat(p) if p else torch.zeros(0, num_draws) for p in parts)
            extra.append(cnt)
        sids += batch_ids
        for n in per_sample:
            offsets.append(offsets[-1] + n)
        positions.append(pos)
        ids.append(i.cpu())
        lps.append(lp.cpu())
    tensors = {
        "sample_ids": torch.tensor(sids, dtype=torch.int64),
        "row_offsets": torch.tensor(offsets, dtype=torch.int64),
        "positions": torch.cat(positions).to(torch.int32),
        "ids": torch.cat(ids).to(torch.int32),
        "logprobs": torch.cat(lps).to(dtype),
    }
    if mode == "topk":
        tensors["tail_logprobs"] = torch.cat([t.cpu() for t in extra]).to(dtype)
    else:
        counts = torch.cat([t.cpu() for t in extra]).to(torch.int16)  # num_samples <= 32767
        # Trim the padding shared by every row of the shard: the width is the most unique ids any row drew.
        width = max(1, int((counts > 0).sum(-1).max())) if counts.numel() else 1
        tensors["ids"], tensors["logprobs"] = tensors["ids"][:, :width], tensors["logprobs"][:, :width]
        tensors["counts"] = counts[:, :width]
    return tensors, int(offsets[-1]), int(vocab or 0)
