"""The teacher protocol: what every source of distillation targets provides, and the targets it returns.

The trainer asks a ``TeacherSource`` for ``TeacherOutputs`` and never branches on the concrete source: a live model
(``live.py``), a logit store (``cached.py``), or any source added later (several teachers, an EMA of the student,
another tokenizer) behind the same methods. Positions are those of the *student's logits*: for a causal LM, position
t holds the teacher's distribution for token t+1, exactly like ``logits[:, t]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..losses.sparse import SparseTargets


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
    parts: list[TeacherPart] = field(default_factory=list)

    def map_positions(self, fn) -> TeacherOutputs:
        """The same targets with ``fn`` applied to every per-position tensor ``(B, S, ...)`` (a gather, a scatter);
        the lm_head is shared, not per position."""
        return TeacherOutputs(
            logits=None if self.logits is None else fn(self.logits),
            sparse=None if self.sparse is None else self.sparse.map(fn),
            hidden_states={k: fn(v) for k, v in self.hidden_states.items()},
            attentions=dict(self.attentions),
            final_hidden=None if self.final_hidden is None else fn(self.final_hidden),
            lm_head_weight=self.lm_head_weight,
            lm_head_bias=self.lm_head_bias,
            parts=[TeacherPart(p.name, p.outputs.map_positions(fn), p.weight, p.rows) for p in self.parts],
        )


@dataclass
class TeacherPart:
    """One of several teachers' targets, when the KD term is one divergence per teacher.

    With ``TeacherOutputs.parts`` set, the trainer computes the KD sum as ``sum_i weight_i * KD(student, outputs_i)``
    over the counted positions of the rows ``rows`` marks (``(B,)`` bool; None = every row), and logs each part's
    own term and agreement under its ``name``. Weights of a combination sum to 1, so that identical teachers equal
    one teacher; routed rows (one teacher per row) have weight 1 and disjoint ``rows``.
    """

    name: str
    outputs: TeacherOutputs
    weight: float = 1.0
    rows: torch.Tensor | None = None


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# Batch columns that only teacher sources read (the student never sees them): the logit-store row id, the context
# teacher's own prompt, the routed teacher of each row, a teacher tokenizer's own ids and the aligned positions. The
# trainer keeps them through column pruning.
TEACHER_BATCH_KEYS = (
    "sample_id",
    "teacher_prompt_ids",
    "teacher_prompt_mask",
    "teacher_index",
    "teacher_input_ids",
    "align_student",
    "align_teacher",
)


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that a model forward takes (no labels: the teacher's own loss is never needed)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def no_logits(batch: dict) -> torch.Tensor:
    """``logits_to_keep`` that keeps no position: the causal-LM head then projects an empty slice, so no
    B x S x V logits are made while the forward still runs through every module (and any DDP wrapper)."""
    return torch.zeros(0, dtype=torch.long, device=batch["input_ids"].device)


def config_output_width(config, task: str) -> int | None:
    """A model's output width for ``task`` read from its config (see ``TeacherSource.output_width``)."""
    if task == "sequence_classification":
        return getattr(config, "num_labels", None)
    return getattr(config, "vocab_size", None)


@runtime_checkable
class TeacherSource(Protocol):
    """What the trainer needs of a teacher, whatever it is.

    Attributes:
        model: the frozen ``nn.Module`` behind the targets, or None when there is none (a logit store). Feature
            terms (hidden states, attention maps) and placement need it.
        config: the teacher's model config, or None.
    """

    model: nn.Module | None
    config: object | None

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        """Targets for ``batch`` (see ``TeacherOutputs``); ``want_final_hidden`` asks for the final hidden states and
        the lm_head instead of logits (the fused loss projects them chunk by chunk); a source that cannot provide
        something asked for raises, naming what it lacks."""
        ...

    def output_width(self, task: str) -> int | None:
        """Columns of the teacher's output for ``task``: its vocabulary rows (padded tails included) for token
        tasks, its number of labels for sequence classification; None when unknown."""
        ...

    def place(self, accelerator, device) -> None:
        """Put the teacher where the run's strategy wants it (device, FSDP2 / ZeRO-3 shards); no-op for sources
        without a model."""
        ...

    def describe(self) -> dict:
        """What the exported student's metadata records about its teacher (JSON scalars)."""
        ...


class WrappingSource:
    """A source around another one (``inner``) that changes what the teacher reads or how its answers are indexed;
    the model, config, output width and placement are the inner source's."""

    def __init__(self, inner: TeacherSource):
        self.inner = inner

    @property
    def model(self):
        return self.inner.model

    @property
    def config(self):
        return self.inner.config

    def output_width(self, task: str) -> int | None:
        return self.inner.output_width(task)

    def place(self, accelerator, device) -> None:
        self.inner.place(accelerator, device)


@runtime_checkable
class TrainedTeacherSource(Protocol):
    """A source whose teacher changes during the run (an EMA of the student), so its state is part of the run's.

    The trainer calls ``after_optimizer_step`` after every optimizer step, writes ``teacher_state()`` into every
    checkpoint and gives it back to ``load_teacher_state`` on resume; sources without these methods are fixed.
    """

    def after_optimizer_step(self, student: nn.Module) -> None: ...

    def teacher_state(self) -> dict[str, torch.Tensor]: ...

    def load_teacher_state(self, state: dict[str, torch.Tensor]) -> None: ...
