"""Teacher sources: where the distillation targets come from.

The trainer asks a teacher source for ``TeacherOutputs`` and never cares whether they were computed now
(``LiveTeacher``) or read from disk (``CachedTeacher``). Positions are those of the *student's logits*: for a
causal LM, position t holds the teacher's distribution for token t+1, exactly like ``logits[:, t]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .logit_store import LogitStore, counted_mask, first_attended, pad_width
from .losses.divergences import LOG_FLOOR
from .losses.sparse import SparseTargets


@dataclass
class TeacherOutputs:
    """Targets for one batch.

    logits: ``(B, S, V)`` (token tasks) or ``(B, C)`` (sequence classification), the teacher's dtype.
    sparse: top-k / sampled targets with the same leading dims as ``logits`` would have.
    hidden_states: teacher layer index (0 = embeddings) -> ``(B, S, H_T)``; only the layers asked for.
    attentions: teacher layer index (1-based, layer i's self-attention) -> ``(B, heads, S, S)`` probabilities.
    final_hidden: ``(B, S, H_T)`` final normed hidden states, for fused chunked losses that apply the lm_head
    themselves; ``lm_head_weight``/``lm_head_bias`` go with it.
    """

    logits: torch.Tensor | None = None
    sparse: SparseTargets | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)
    final_hidden: torch.Tensor | None = None
    lm_head_weight: torch.Tensor | None = None
    lm_head_bias: torch.Tensor | None = None


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that a model forward takes (no labels: the teacher's own loss is never needed)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def no_logits(batch: dict) -> torch.Tensor:
    """``logits_to_keep`` that keeps no position: the causal-LM head then projects an empty slice, so no
    B x S x V logits are made while the forward still runs through every module (and any DDP wrapper)."""
    return torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device)


class LiveTeacher:
    """A frozen model run forward under ``torch.no_grad`` for every batch.

    ``no_grad`` rather than ``inference_mode``: inference tensors may not be saved for backward, and feature losses
    (MSE against teacher hidden states) do save their targets.

    The model is put in eval mode and ``requires_grad_(False)``; it keeps its own dtype (bf16/fp16 teachers
    are fine, losses upcast to fp32).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.model.eval()
        self.model.requires_grad_(False)

    @property
    def config(self):
        return self.model.config

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        """Targets for ``batch``. ``want_final_hidden``: return the final normed hidden states and the lm_head
        instead of logits, for fused losses that project chunk by chunk (no B x S x V teacher logits are made)."""
        # Eval mode every call: Trainer.train() puts *its* model in train mode, and a user may have called
        # .train() on the teacher; dropout in the teacher would make the targets noisy.
        self.model.eval()
        need_hidden = bool(hidden_layers)
        need_attn = bool(attention_layers)
        extra = {"logits_to_keep": no_logits(batch)} if want_final_hidden else {}
        with torch.no_grad():
            out = self.model(
                **model_inputs(batch),
                output_hidden_states=need_hidden or want_final_hidden or None,
                output_attentions=need_attn or None,
                return_dict=True,
                **extra,
            )
        result = TeacherOutputs(logits=out.logits if want_logits and not want_final_hidden else None)
        if want_final_hidden:
            head = self.model.get_output_embeddings()
            result.final_hidden = out.hidden_states[-1]
            result.lm_head_weight, result.lm_head_bias = head.weight, getattr(head, "bias", None)
        if need_hidden:
            result.hidden_states = {i: out.hidden_states[i] for i in hidden_layers}
        if need_attn:
            if not out.attentions:
                raise RuntimeError(
                    "the teacher returned no attention maps; load it with attn_implementation='eager' (SDPA and "
                    "flash attention do not return them)"
                )
            result.attentions = {i: out.attentions[i - 1] for i in attention_layers}
        return result


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
                                    max_length=args.max_length, temperature=args.temperature)
        teacher = CachedTeacher(args.teacher_logits_path, expected=expected)
        targets = teacher(batch).sparse
        loss = sparse_divergence(student_logits, targets, kind=..., temperature=args.temperature,
                                 mask=counted_mask(batch, "causal_lm"), reduction="sum")

    Args:
        store: a ``LogitStore`` or the store directory.
        expected: fingerprint the run requires (see ``store_fingerprint.make_fingerprint``); checked on open.
        verify: passed to ``LogitStore`` when a path is given.
    """

    def __init__(self, store, *, expected: dict | None = None, verify: str = "checksum"):
        self.store = store if isinstance(store, LogitStore) else LogitStore(store, expected=expected, verify=verify)
        if expected is not None and isinstance(store, LogitStore):
            self.store.check_fingerprint(expected)
        self.task = self.store.task
        self.temperature = self.store.temperature
        self.config = None  # no model behind it; vocab_size is in the store

    @property
    def vocab_size(self) -> int:
        return self.store.vocab_size

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
