"""A cached teacher: sparse targets read from a logit store by sample id."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..losses.divergences import LOG_FLOOR
from ..losses.sparse import SparseTargets
from .base import TeacherOutputs
from .store.format import counted_mask, first_attended, pad_width
from .store.reader import LogitStore


class CachedTeacher:
    """Teacher targets read from a logit store (written by ``cache_logits``), looked up by ``batch["sample_id"]``.

    Rows are found by sample id, never by step or position in the epoch, so shuffling, gradient accumulation and
    several processes cannot misalign them. For every sample the stored counted positions are checked against
    the batch's label mask; a difference means the data or its tokenisation changed since the store was written.

    Returns ``TeacherOutputs(sparse=SparseTargets(...))`` with leading dims ``(B, S)`` aligned with the student's
    logits (``(B,)`` for sequence classification) and width w (k for top-k; for sampled stores, the most unique
    ids any row of the batch drew). Uncounted entries hold id 0, log-probabilities LOG_FLOOR and (top-k) tail
    LOG_FLOOR or (sampled) weight 0; the trainer masks them out. Values are fp32.

    Typical use in a trainer (the run states what it expects; fields it leaves ``None`` are not checked)::

        expected = make_fingerprint(teacher_id=args.teacher_model_name_or_path, tokenizer=tokenizer,
                                    dataset_fingerprint=hash_dataset(train_dataset), task="causal_lm",
                                    temperature=args.temperature)
        teacher = CachedTeacher(args.teacher_logits_path, expected=expected)
        targets = teacher(batch).sparse
        loss = sparse_divergence(student_logits, targets, kind=..., temperature=args.temperature,
                                 mask=counted_mask(batch, "causal_lm"), reduction="sum")

    Args:
        store: a ``LogitStore`` or the store directory.
        expected: fingerprint the run requires (see ``store.fingerprint.make_fingerprint``); checked on open.
        verify: passed to ``LogitStore`` when a path is given.
    """

    def __init__(self, store, *, expected: dict | None = None, verify: str = "checksum"):
        self.store = store if isinstance(store, LogitStore) else LogitStore(store, expected=expected, verify=verify)
        if expected is not None and isinstance(store, LogitStore):
            self.store.check_fingerprint(expected)
        self.task = self.store.task
        self.model = None  # no model behind it: no features, nothing to place
        self.config = None

    def output_width(self, task: str) -> int | None:
        return self.store.vocab_size  # the teacher's vocabulary rows, or num_labels for classification

    def place(self, accelerator, device) -> None:
        """Nothing to place: targets are read from disk onto each batch's device."""

    def describe(self) -> dict:
        return {"teacher": self.store.fingerprint.get("teacher_id"), "teacher_logits_path": str(self.store.path)}

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        if hidden_layers or attention_layers:
            raise ValueError(
                f"a cached teacher holds only output distributions; hidden_layers={list(hidden_layers)} and "
                f"attention_layers={list(attention_layers)} need the live teacher model (drop the hidden/attention "
                "loss terms or distil from a LiveTeacher)"
            )
        if not want_logits:
            return TeacherOutputs()
        if "sample_id" not in batch:
            raise KeyError("a cached teacher looks targets up by batch['sample_id'], which this batch lacks")
        sample_ids = torch.as_tensor(batch["sample_id"]).reshape(-1).tolist()
        device = batch["input_ids"].device
        records = self.store.rows_many(sample_ids)
        mask = counted_mask(batch, self.task).cpu()
        sampled = self.store.mode == "sampled"
        width = max((int(r["ids"].shape[-1]) for r in records), default=1)
        lead = tuple(mask.shape)
        ids = torch.zeros((*lead, width), dtype=torch.long)
        logprobs = torch.full((*lead, width), LOG_FLOOR, dtype=torch.float32)
        extra = torch.zeros((*lead, width)) if sampled else torch.full(lead, LOG_FLOOR, dtype=torch.float32)
        origin = first_attended(batch).cpu()
        for b, (sid, rec) in enumerate(zip(sample_ids, records)):
            if self.task == "sequence_classification":
                if rec["ids"].shape[0] != 1:
                    raise ValueError(f"sample_id {sid}: the store holds {rec['ids'].shape[0]} rows, expected 1")
                rec = {key: v[0] for key, v in rec.items()}
                where = b
            else:
                t = mask[b].nonzero().squeeze(-1)
                stored = rec["positions"].long() + origin[b]
                if t.shape != stored.shape or not torch.equal(t, stored):
                    raise ValueError(
                        f"sample_id {sid}: the store has targets at {stored.numel()} positions but the batch's label "
                        f"mask counts {t.numel()} (first stored {stored[:5].tolist()}, batch {t[:5].tolist()}); the "
                        "data or its tokenisation changed since cache-logits ran: re-run it"
                    )
                where = (b, t)
            ids[where] = pad_width(rec["ids"].long(), width, 0)
            logprobs[where] = pad_width(rec["logprobs"].float(), width, LOG_FLOOR)
            extra[where] = pad_width(rec["weights"], width, 0.0) if sampled else rec["tail_logprobs"].float()
        if sampled:
            targets = SparseTargets(ids.to(device), logprobs.to(device), weights=extra.to(device))
        else:
            targets = SparseTargets(ids.to(device), logprobs.to(device), tail_logprobs=extra.to(device))
        return TeacherOutputs(sparse=targets)
