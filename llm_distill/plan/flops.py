"""Floating-point operations per optimizer step and per device, by part of the step.

The usual accounting (Kaplan et al. 2020, sec. 2.1; Narayanan et al. 2021, sec. 5.1): a matmul with a weight of P
entries costs 2 P flops per token forward and 4 P backward (gradients for the input and for the weight; 2 P when
the weight is frozen, e.g. a LoRA base). Attention scores and their weighted sum add 4 S d per layer per token
forward over S keys (d = heads x head_dim); a causal model attends to S/2 keys on average. Gradient checkpointing
runs every block's forward once more. The lm_head costs 2 H V per position that is projected (every position with
materialised logits; the counted ones on the fused path).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ModelShape
from .spec import RunSpec


@dataclass
class StepFlops:
    """Flops of one optimizer step on one device, by part (all include the gradient-accumulation window)."""

    student_blocks: float  # forward + backward of embeddings-to-final-norm
    recompute: float  # gradient checkpointing's second forward
    student_head: float  # lm_head / classifier forward + backward, and the loss around it
    teacher: float  # teacher forward(s), lm_head included
    generation: float  # on-policy sampling (student forward per new token)
    tokens: float  # token positions per step per device

    @property
    def total(self) -> float:
        return self.student_blocks + self.recompute + self.student_head + self.teacher + self.generation


def attention_flops(shape: ModelShape, seq: float, causal: bool) -> float:
    """Forward flops per token of the attention scores and weighted sums over all layers."""
    cfg = shape.config
    heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", None) or (shape.hidden // heads if heads else 0))
    keys = seq / 2 if causal else seq
    return 4 * keys * heads * head_dim * shape.num_layers


def forward_flops_per_token(shape: ModelShape, seq: float, causal: bool) -> float:
    """Blocks only (no lm_head): 2 P_matmul + attention."""
    return 2 * shape.matmul_params + attention_flops(shape, seq, causal)


def step_flops(spec: RunSpec, batch: int) -> StepFlops:
    causal = spec.task == "causal_lm"
    seq = spec.lengths.mean_padded + (spec.onpolicy.max_new_tokens if spec.onpolicy else 0)
    tokens = batch * seq * spec.grad_accum
    s = spec.student
    fwd = forward_flops_per_token(s, seq, causal) * tokens
    frozen = s.adapter_params > 0
    # Frozen base weights need only the input gradient: 1 x forward instead of 2 x (adapters are negligible).
    backward = (1.0 if frozen else 2.0) * fwd
    recompute = fwd if spec.gradient_checkpointing else 0.0
    if spec.task == "sequence_classification":
        projected, width = batch * spec.grad_accum, (s.num_labels or 2)
    else:
        counted = batch * (seq - 1) * spec.grad_accum if causal else tokens
        projected, width = (counted if spec.fused else tokens), (s.vocab or 0)
    head = 2 * s.hidden * width * projected * (2.0 if frozen and not spec.fused else 3.0)
    teacher = 0.0
    for t in spec.teachers:
        t_width = (t.shape.num_labels or 2) if spec.task == "sequence_classification" else (t.shape.vocab or 0)
        teacher += forward_flops_per_token(t.shape, seq, causal) * tokens + 2 * t.shape.hidden * t_width * projected
    generation = 0.0
    if spec.onpolicy:
        share = spec.onpolicy.lmbda if not spec.onpolicy.seq_kd else 1.0
        new = spec.onpolicy.max_new_tokens
        prompt = spec.lengths.mean_padded
        per_row = (
            forward_flops_per_token(s, prompt + new, causal) * (prompt + new) + 2 * s.hidden * (s.vocab or 0) * new
        )
        generation = share * per_row * batch * spec.grad_accum
    return StepFlops(fwd + backward, recompute, head, teacher, generation, tokens)
