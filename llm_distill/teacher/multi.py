"""Several teachers behind one source: a weighted mixture, a weighted sum of divergences, or one teacher per row.

- ``mixture``: one target, p = sum_i w_i * softmax(z_i / T), returned as logits ``T * log p`` so that every loss
  path (dense, fused) tempers it back to exactly p. Dense (live) teachers only.
- ``sum``: one ``TeacherPart`` per teacher; the trainer adds ``w_i * KD(student, teacher_i)``.
- routed (``teacher_column``): one part per teacher with weight 1 over the rows whose ``batch["teacher_index"]``
  names it; each teacher runs only on its own rows (except under FSDP / ZeRO-3, where every process must run every
  sharded teacher for its collectives, so each teacher then sees the whole batch).

Weights are normalised to sum to 1, so that two identical teachers give exactly one teacher's loss. Teachers must
share the student's tokenizer; their logits are cut to the tokenizer's real size before they are mixed (padded
embedding tails are not tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..losses.divergences import LOG_FLOOR
from ..losses.sparse import SparseTargets
from .base import TeacherOutputs, TeacherPart, TeacherSource
from .sharding import shards_teacher


def _rows_of(batch: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of the marked rows (every tensor of a batch has the batch as its leading dim)."""
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in batch.items()}


def _scatter(values: torch.Tensor, rows: torch.Tensor, fill: float) -> torch.Tensor:
    full = values.new_full((rows.shape[0], *values.shape[1:]), fill)
    full[rows] = values
    return full


def _scatter_outputs(out: TeacherOutputs, rows: torch.Tensor) -> TeacherOutputs:
    """A sub-batch's targets put back at their rows of the whole batch; other rows hold finite, masked values."""
    sparse = out.sparse
    if sparse is not None:
        sparse = SparseTargets(
            _scatter(sparse.ids, rows, 0),
            _scatter(sparse.logprobs, rows, LOG_FLOOR),
            None if sparse.tail_logprobs is None else _scatter(sparse.tail_logprobs, rows, LOG_FLOOR),
            None if sparse.weights is None else _scatter(sparse.weights, rows, 0.0),
        )
    scattered = out.map_positions(lambda t: _scatter(t, rows, 0.0))
    scattered.sparse = sparse
    return scattered


class MultiTeacher:
    """Several ``TeacherSource`` s combined into one.

    Args:
        members: ``(name, source, weight)`` per teacher; weights > 0, normalised here.
        mode: ``mixture`` or ``sum``; ignored when ``routed``.
        routed: each row is taught by the teacher ``batch["teacher_index"]`` names.
        temperature: the training temperature (the mixture is of tempered distributions).
        vocab_size: the tokenizer's real size for token tasks (logits are cut to it before mixing), else None.
    """

    def __init__(
        self,
        members: Sequence[tuple[str, TeacherSource, float]],
        *,
        mode: str = "mixture",
        routed: bool = False,
        temperature: float = 1.0,
        vocab_size: int | None = None,
    ):
        if not members:
            raise ValueError("MultiTeacher needs at least one teacher")
        total = sum(w for _, _, w in members)
        self.names = [n for n, _, _ in members]
        self.sources = [s for _, s, _ in members]
        self.weights = [w / total for _, _, w in members]
        self.mode = mode
        self.routed = routed
        self.temperature = temperature
        self.vocab_size = vocab_size
        self.subset_rows = True  # run each routed teacher on its own rows only (see place)
        self.model = None  # several models: no single one for feature terms (refused by the config)
        self.config = self.sources[0].config

    def output_width(self, task: str) -> int | None:
        widths = [s.output_width(task) for s in self.sources]
        if task == "sequence_classification" and len(set(widths)) > 1:
            raise ValueError(f"the teachers {self.names} have different numbers of labels {widths}; they must match")
        known = [w for w in widths if w is not None]
        return min(known) if known else None

    def place(self, accelerator, device) -> None:
        for source in self.sources:
            source.place(accelerator, device)
        # A sharded teacher's forward is a collective: every process must run it, rows or not.
        self.subset_rows = not shards_teacher(accelerator)

    def describe(self) -> dict:
        return {
            "teacher": [d.get("teacher") for d in (s.describe() for s in self.sources)],
            "teachers": [
                {"name": n, "weight": w, **s.describe()} for n, s, w in zip(self.names, self.sources, self.weights)
            ],
            "multi_teacher": "routed" if self.routed else self.mode,
        }

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
                "several teachers give output distributions only; hidden/attention terms need one teacher"
            )
        if self.routed:
            return self._routed(batch, want_final_hidden)
        if self.mode == "mixture":
            return self._mixture(batch)
        parts = [
            TeacherPart(name, source(batch, want_final_hidden=want_final_hidden), weight)
            for name, source, weight in zip(self.names, self.sources, self.weights)
        ]
        return TeacherOutputs(parts=parts)

    def _mixture(self, batch: dict) -> TeacherOutputs:
        """``T * log sum_i w_i softmax(z_i / T)`` in fp32: the loss's own tempering gives back the mixture."""
        t = self.temperature
        mixed = None
        for source, weight in zip(self.sources, self.weights):
            logits = source(batch).logits
            if logits is None:
                raise ValueError("multi_teacher='mixture' needs dense teacher logits; use multi_teacher='sum'")
            if self.vocab_size is not None:
                logits = logits[..., : self.vocab_size]
            term = torch.log_softmax(logits.float() / t, dim=-1) + math.log(weight)
            mixed = term if mixed is None else torch.logaddexp(mixed, term)
        return TeacherOutputs(logits=mixed * t)

    def _routed(self, batch: dict, want_final_hidden: bool) -> TeacherOutputs:
        if "teacher_index" not in batch:
            raise KeyError(
                "teacher_column routes rows, but the batch has no 'teacher_index'; build the dataset with "
                "build_datasets(..., teacher_column=..., teacher_names=...)"
            )
        index = torch.as_tensor(batch["teacher_index"]).reshape(-1)
        parts = []
        for i, (name, source) in enumerate(zip(self.names, self.sources)):
            rows = (index == i).to(batch["input_ids"].device)
            if self.subset_rows:
                if not bool(rows.any()):
                    parts.append(TeacherPart(name, TeacherOutputs(), 1.0, rows))
                    continue
                out = _scatter_outputs(source(_rows_of(batch, rows), want_final_hidden=want_final_hidden), rows)
            else:
                out = source(batch, want_final_hidden=want_final_hidden)
            parts.append(TeacherPart(name, out, 1.0, rows))
        return TeacherOutputs(parts=parts)
