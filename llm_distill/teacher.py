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
    ) -> TeacherOutputs:
        # Eval mode every call: Trainer.train() puts *its* model in train mode, and a user may have called
        # .train() on the teacher; dropout in the teacher would make the targets noisy.
        self.model.eval()
        need_hidden = bool(hidden_layers)
        need_attn = bool(attention_layers)
        with torch.no_grad():
            out = self.model(
                **model_inputs(batch),
                output_hidden_states=need_hidden or None,
                output_attentions=need_attn or None,
                return_dict=True,
            )
        result = TeacherOutputs(logits=out.logits if want_logits else None)
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
