"""A live teacher: a frozen model run forward for every batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import TeacherOutputs, config_output_width, model_inputs, no_logits
from .sharding import prepare_teacher, shards_teacher


class LiveTeacher:
    """A frozen model run forward under ``torch.no_grad`` for every batch.

    ``no_grad`` rather than ``inference_mode``: inference tensors may not be saved for backward, and feature losses
    (MSE against teacher hidden states) do save their targets.

    The model is put in eval mode and ``requires_grad_(False)``; it keeps its own dtype (bf16/fp16 teachers
    are fine, losses upcast to fp32).
    """

    def __init__(self, model: nn.Module, *, name: str | None = None):
        self.model = model
        self.name = name
        self.model.eval()
        self.model.requires_grad_(False)

    @property
    def config(self):
        return self.model.config

    def output_width(self, task: str) -> int | None:
        return config_output_width(self.config, task)

    def place(self, accelerator, device) -> None:
        # DDP / single device: every process holds a full frozen replica; no wrapper, no gradient sync needed.
        if shards_teacher(accelerator):
            self.model = prepare_teacher(self.model, accelerator)
        elif not getattr(self.model, "hf_device_map", None):
            self.model.to(device)

    def describe(self) -> dict:
        return {"teacher": self.name or getattr(self.config, "_name_or_path", None) or None}

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
        return forward_targets(
            self.model,
            batch,
            hidden_layers=hidden_layers,
            attention_layers=attention_layers,
            want_logits=want_logits,
            want_final_hidden=want_final_hidden,
        )


def forward_targets(
    model: nn.Module,
    batch: dict,
    *,
    hidden_layers: Sequence[int] = (),
    attention_layers: Sequence[int] = (),
    want_logits: bool = True,
    want_final_hidden: bool = False,
) -> TeacherOutputs:
    """One teacher forward of ``model`` under ``no_grad`` (the caller sets its mode), as ``TeacherOutputs``."""
    need_hidden = bool(hidden_layers)
    need_attn = bool(attention_layers)
    extra = {"logits_to_keep": no_logits(batch)} if want_final_hidden else {}
    with torch.no_grad():
        out = model(
            **model_inputs(batch),
            output_hidden_states=need_hidden or want_final_hidden or None,
            output_attentions=need_attn or None,
            return_dict=True,
            **extra,
        )
    result = TeacherOutputs(logits=out.logits if want_logits and not want_final_hidden else None)
    if want_final_hidden:
        head = model.get_output_embeddings()
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
