"""Pure tensor losses: no model, tokenizer or trainer in here; nothing else of the package is imported.

``divergences`` (dense, per token), ``sparse`` (top-k + tail and sampled teacher targets), ``fused`` (chunked lm_head
+ divergence with closed-form gradients), ``terms`` (the KD/CE sums of a batch on either path), ``features``
(hidden-state and attention-map losses), ``cross_vocab`` (a teacher and a student with different vocabularies:
ULD, exact map, hybrid), ``relations`` (MiniLMv2 self-attention relations, pre-softmax attention
scores, RKD), ``selection`` (teacher-guided token scores and which tokens a row keeps).
"""

from .cross_vocab import (
    CROSS_VOCAB_LOSSES,
    exact_map_divergence,
    hybrid_loss,
    matched_mass,
    uld_loss,
    unmatched_uld,
)
from .divergences import (
    DIVERGENCE_KINDS,
    check_kind,
    check_temperature,
    divergence,
    divergence_from_logprobs,
    hard_ce,
    reduce_tokens,
)
from .features import ATTENTION_LOSS_KINDS, HIDDEN_LOSS_KINDS, attention_loss, hidden_state_loss
from .fused import fused_distillation_loss
from .relations import (
    RELATION_KINDS,
    attention_relation_loss,
    attention_score_loss,
    pool_hidden,
    rkd_angle_loss,
    rkd_distance_loss,
)
from .selection import SELECTION_LEVELS, SELECTION_SCORES, kept_per_row, select_tokens
from .sparse import SparseTargets, sparse_divergence

__all__ = [
    "ATTENTION_LOSS_KINDS",
    "CROSS_VOCAB_LOSSES",
    "DIVERGENCE_KINDS",
    "HIDDEN_LOSS_KINDS",
    "RELATION_KINDS",
    "SELECTION_LEVELS",
    "SELECTION_SCORES",
    "SparseTargets",
    "attention_loss",
    "attention_relation_loss",
    "attention_score_loss",
    "check_kind",
    "check_temperature",
    "divergence",
    "divergence_from_logprobs",
    "exact_map_divergence",
    "fused_distillation_loss",
    "hard_ce",
    "hidden_state_loss",
    "hybrid_loss",
    "matched_mass",
    "kept_per_row",
    "pool_hidden",
    "reduce_tokens",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "select_tokens",
    "sparse_divergence",
    "uld_loss",
    "unmatched_uld",
]
