"""Pure tensor losses: no model, tokenizer or trainer in here."""

from .divergences import DIVERGENCE_KINDS, divergence, divergence_from_logprobs, hard_ce, reduce_tokens
from .fused import fused_distillation_loss
from .sparse import SparseTargets, sparse_divergence

__all__ = [
    "DIVERGENCE_KINDS",
    "SparseTargets",
    "divergence",
    "divergence_from_logprobs",
    "fused_distillation_loss",
    "hard_ce",
    "reduce_tokens",
    "sparse_divergence",
]
