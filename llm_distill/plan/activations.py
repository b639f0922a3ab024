"""Activation memory of the student (what its forward saves for backward) and the teacher's forward working memory.

Both are measured on fake tensors (``trace.py``) with the real model code at the run's batch, sequence length,
attention implementation and precision, on a copy of the model with two blocks (``shrink_config``): the second
block's bytes are one layer's, the first block's surplus (tables shared by every layer, e.g. RoPE's) and everything
outside the blocks (embeddings, final norm, kept outputs) are the rest. The cost of a plan is then independent of the
model's depth.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..features import FeatureDistiller, prepare_for_feature_distillation
from .models import block_list, default_dtype, meta_model, shallow_config, wrap_lora
from .spec import RunSpec
from .trace import LiveBytes, SavedBytes, fake_mode, to_fake

TRACE_LAYERS = 2


@dataclass
class Activations:
    """Bytes the student keeps for backward at the end of its forward (per device, at the traced batch)."""

    per_layer: int  # one transformer block
    layer_input: int  # one block's input: all a checkpointed block keeps until its backward recomputes it
    rest: int  # outside the blocks: embeddings, final norm and the final hidden states, shared tables, adapters
    weight_copies: int  # autocast's 16-bit copies of every Linear weight, saved by the matmuls (closed form)
    features: int  # projections and feature losses (hidden-state / attention terms)
    layers: int
    traced_weight_copies: int = 0  # the copies the shallow trace saw (a check of the closed form)

    def saved(self, checkpointing: bool) -> int:
        """Without checkpointing every block's tensors; with it one input per block, plus one block recomputed."""
        if checkpointing:
            return self.rest + self.features + self.layers * self.layer_input + self.per_layer
        return self.rest + self.features + self.layers * self.per_layer


def _autocast(spec: RunSpec):
    if spec.autocast:
        return torch.autocast("cpu", dtype=spec.compute_dtype)
    return contextlib.nullcontext()


def _lora(model, spec: RunSpec):
    if not spec.student_lora:
        return model
    return wrap_lora(model, spec.student_lora)


def _inputs(spec: RunSpec, batch: int, seq: int) -> dict:
    inputs = {"input_ids": torch.zeros(batch, seq, dtype=torch.long)}
    if spec.task != "causal_lm" or spec.lengths.longest != spec.lengths.mean_padded:
        inputs["attention_mask"] = torch.ones(batch, seq, dtype=torch.long)
    return inputs


def student_activations(spec: RunSpec, batch: int) -> Activations:
    """Trace the student's forward (the call the trainer makes) at ``batch`` rows of ``spec.seq`` tokens."""
    shape = spec.student
    config = shallow_config(shape.config, TRACE_LAYERS)
    config._attn_implementation = spec.student_attn
    with default_dtype(shape.dtype):
        model = _lora(meta_model(config, shape.model_class), spec)
    with fake_mode():
        model = to_fake(model).train()
        if spec.attention_pairs:
            # As the trainer does: attention-probability dropout off (the maps are targets), eager attention.
            prepare_for_feature_distillation(model, attentions=True)
        blocks = block_list(model.get_base_model() if hasattr(model, "get_base_model") else model)
        labels = {f"block{i}": b for i, b in enumerate(blocks)}
        inputs = _inputs(spec, batch, spec.seq)
        kwargs = {}
        if spec.task == "causal_lm":
            # The trainer's fused path asks for hidden states and no logits; the naive path's logits and what the
            # loss does with them are the vocabulary item, so they are left out here on both paths.
            kwargs = {"output_hidden_states": True, "logits_to_keep": torch.zeros(0, dtype=torch.long)}
        if spec.hidden_pairs:
            kwargs["output_hidden_states"] = True
        if spec.attention_pairs:
            kwargs["output_attentions"] = True
        block_inputs: list[int] = []
        handle = blocks[-1].register_forward_pre_hook(
            lambda m, args, kw: block_inputs.append(_first_tensor_bytes(args, kw)), with_kwargs=True
        )
        with _autocast(spec), SavedBytes(model.parameters(), labels) as saved:
            out = model(**inputs, **kwargs)
            if spec.task == "causal_lm":
                saved.add_outputs([out.hidden_states[-1]])  # kept for the vocabulary loss on both paths
            features = _feature_bytes(spec, out, batch) if (spec.hidden_pairs or spec.attention_pairs) else 0
        handle.remove()
    n = len(blocks)
    per_layer = saved.by_label.get(f"block{n - 1}", 0)
    first_extra = sum(saved.by_label.get(f"block{i}", 0) for i in range(n)) - n * per_layer
    return Activations(
        per_layer=per_layer,
        layer_input=block_inputs[0] if block_inputs else 0,
        rest=saved.by_label.get("rest", 0) + first_extra,
        weight_copies=2 * shape.linear_params if spec.autocast else 0,
        traced_weight_copies=saved.weight_copies,
        features=features,
        layers=shape.num_layers,
    )


def _first_tensor_bytes(args, kwargs) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.numel() * value.element_size()
    return 0


def _feature_bytes(spec: RunSpec, out, batch: int) -> int:
    """Saved bytes of the feature terms (projections and losses) for the run's layer maps, at full depth."""
    teacher = spec.teachers[0].shape if spec.teachers else None
    if teacher is None:
        return 0
    args = spec.args
    fd = FeatureDistiller(
        spec.student.num_layers,
        teacher.num_layers,
        spec.student.hidden,
        teacher.hidden,
        hidden_map=spec.hidden_pairs or None,
        attention_map=spec.attention_pairs or None,
        hidden_loss=args.hidden_loss,
        attention_loss=args.attention_loss,
    )
    seq = spec.seq
    act = spec.compute_dtype if spec.autocast else spec.student.dtype
    s_heads = int(spec.student.config.num_attention_heads)
    t_heads = int(teacher.config.num_attention_heads)
    hidden = {
        s: torch.zeros(batch, seq, spec.student.hidden, dtype=act, requires_grad=True) for s, _ in spec.hidden_pairs
    }
    attn = {s: torch.zeros(batch, s_heads, seq, seq, dtype=act, requires_grad=True) for s, _ in spec.attention_pairs}
    t_hidden = {t: torch.zeros(batch, seq, teacher.hidden, dtype=teacher.dtype) for _, t in spec.hidden_pairs}
    t_attn = {t: torch.zeros(batch, t_heads, seq, seq, dtype=teacher.dtype) for _, t in spec.attention_pairs}
    mask = torch.ones(batch, seq, dtype=torch.long)
    params = list(fd.parameters()) + list(hidden.values()) + list(attn.values())
    with SavedBytes(params) as saved:
        fd(mask, student_hidden_states=hidden, student_attentions=attn, teacher_hidden_states=t_hidden,
           teacher_attentions=t_attn)  # fmt: skip
    return saved.total


def teacher_forward_peak(spec: RunSpec, teacher, batch: int, *, keep_hidden: bool, keep_attentions: bool) -> int:
    """Most bytes alive at once during the teacher's no-grad forward (its outputs included), at full depth.

    A block's working memory is freed before the next block runs; what a block leaves behind until the forward
    returns (its hidden states and attention maps when asked for, its keys and values when the model keeps a
    cache) is the difference between traces with one and two blocks: ``peak(L) = peak(1) + (L - 1) * growth``.
    """
    peaks = []
    for layers in (1, 2):
        config = shallow_config(teacher.config, layers)
        config._attn_implementation = spec.teachers[0].attn if spec.teachers else config._attn_implementation
        with default_dtype(teacher.dtype):
            model = meta_model(config, teacher.model_class)
        with fake_mode():
            model = to_fake(model).eval()
            inputs = _inputs(spec, batch, spec.seq)
            kwargs = {"output_hidden_states": keep_hidden or None, "output_attentions": keep_attentions or None}
            if spec.fused:
                kwargs["logits_to_keep"] = torch.zeros(0, dtype=torch.long)
            with torch.no_grad(), LiveBytes() as live:
                out = model(**inputs, **kwargs)
                del out
        peaks.append(live.peak)
    return peaks[0] + (teacher.num_layers - 1) * max(peaks[1] - peaks[0], 0)
