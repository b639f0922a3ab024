"""Losses between a student and a teacher that do not share a vocabulary.

The inputs are logits at *aligned positions* (``llm_distill.vocab.align``): row n of the student and row n of the
teacher predict the next token after the same text, each in its own vocabulary (student ``V_S``, teacher ``V_T``
classes, which may differ in size and order). Three ways to compare two such distributions, p_S = softmax(z_S / T)
and p_T = softmax(z_T / T):

- ``uld`` (Universal Logit Distillation, Boizard et al. 2024): sum_i |sort(p_S)_i - sort(p_T)_i| with both sorted in
  decreasing order and the shorter vocabulary padded with zeros. It is the Wasserstein-1 distance the paper reduces
  to, needs no correspondence between ids, is 0 for identical distributions and does not change when either
  vocabulary is permuted; it matches the *shape* of the distribution, not which token is likely.
- ``exact`` (exact-match vocabulary map, ``llm_distill.vocab.exact_map``): K pairs of ids that stand for the same
  text. Each side's distribution is restricted to its K matched ids plus one tail class holding the rest of that
  side's mass (as the top-k sparse store does), and any divergence of ``DIVERGENCE_KINDS`` is taken over these
  K + 1 classes. With a complete map (same vocabulary, or a permutation) both tails are empty and the result equals
  the ordinary divergence.
- ``hybrid``: ``exact_weight`` * exact + ``uld_weight`` * ULD of the *unmatched* mass only (each side's probabilities
  with its matched ids set to zero, sorted, L1). The exact term carries the matched tokens id by id; the ULD term
  shapes what the map cannot pair, and vanishes as the map covers the mass (exactly 0 for a complete map).

Every function returns per-position values reduced by :func:`reduce_tokens` (sum over counted positions / their
number, 0 on an empty mask) and multiplied by T**2 when ``scale_by_t2``. Arithmetic is fp32; the teacher side is
detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .divergences import LOG_FLOOR, check_kind, divergence_from_logprobs, reduce_tokens

CROSS_VOCAB_LOSSES = ("uld", "exact", "hybrid")


def _check_shapes(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must "
            "agree on every dim but the last (one row per aligned position); gather both at the aligned positions"
        )


def _check_map(student_ids: torch.Tensor, teacher_ids: torch.Tensor, v_s: int, v_t: int) -> None:
    if student_ids.dim() != 1 or student_ids.shape != teacher_ids.shape:
        raise ValueError(
            f"student_ids {tuple(student_ids.shape)} and teacher_ids {tuple(teacher_ids.shape)} must be 1-D of the "
            "same length (one matched pair per entry)"
        )
    if student_ids.numel() and (int(student_ids.max()) >= v_s or int(teacher_ids.max()) >= v_t):
        raise ValueError(
            f"a matched id is out of range: student ids must be < {v_s} and teacher ids < {v_t} (the logits' widths)"
        )


def sorted_l1(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """sum_i |sort(p_S)_i - sort(p_T)_i| over the last dim, both sorted decreasingly, the shorter padded with 0.

    Args:
        student_probs: ``(..., V_S)``; teacher_probs: ``(..., V_T)`` (any non-negative masses, not renormalised).
    Returns:
        ``(...)``.
    """
    s = student_probs.sort(dim=-1, descending=True).values
    with torch.no_grad():
        t = teacher_probs.sort(dim=-1, descending=True).values
    m = min(s.shape[-1], t.shape[-1])
    # Padding with zeros: past the shorter length each entry of the longer side adds |x - 0| = x.
    return (s[..., :m] - t[..., :m]).abs().sum(-1) + s[..., m:].sum(-1) + t[..., m:].sum(-1)


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Universal Logit Distillation loss (Boizard et al. 2024): L1 between sorted probability vectors.

    Args:
        student_logits: ``(..., V_S)`` any float dtype; carries the gradient.
        teacher_logits: ``(..., V_T)`` any float dtype; a constant target. ``V_S`` and ``V_T`` may differ.
        mask: bool ``(...)``, True where the aligned position counts.
        reduction, scale_by_t2: as in :func:`llm_distill.losses.divergence`.
    Returns:
        fp32 scalar (``mean``/``sum``) or ``(...)`` (``none``).
    """
    _check_shapes(student_logits, teacher_logits, temperature)
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_position = sorted_l1(p_s, p_t)
    if scale_by_t2:
        per_position = per_position * (temperature**2)
    return reduce_tokens(per_position, mask, reduction)


def _matched_mask(ids: torch.Tensor, width: int) -> torch.Tensor:
    matched = torch.zeros(width, dtype=torch.bool, device=ids.device)
    matched[ids] = True
    return matched


def restrict_to_map(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(..., V)`` log-probs -> ``(..., K + 1)``: the K matched ids in map order, then the log tail mass.

    The tail is a log-sum-exp over the unmatched entries (not log(1 - sum p), which loses all precision when the
    matched mass is close to 1), floored at ``LOG_FLOOR`` so an empty tail stays finite with a zero gradient.
    """
    picked = logprobs.index_select(-1, ids)
    # A finite fill, not -inf: when every id is matched, logsumexp over all -inf has a NaN gradient.
    rest = logprobs.masked_fill(_matched_mask(ids, logprobs.shape[-1]), 10.0 * LOG_FLOOR)
    tail = torch.logsumexp(rest, dim=-1, keepdim=True).clamp(min=LOG_FLOOR)
    return torch.cat([picked, tail], dim=-1)


def exact_map_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Divergence over the exact vocabulary map plus one tail class per side.

    Args:
        student_logits: ``(..., V_S)``; teacher_logits: ``(..., V_T)``.
        student_ids, teacher_ids: ``(K,)`` int64, the matched pairs (``VocabMap.student_ids``/``teacher_ids``).
        kind, beta: the divergence (``DIVERGENCE_KINDS``) and its mixing coefficient.
        mask, reduction, scale_by_t2: as in :func:`llm_distill.losses.divergence`.
    Returns:
        fp32 scalar (``mean``/``sum``) or ``(...)`` (``none``).
    """
    check_kind(kind, beta)
    _check_shapes(student_logits, teacher_logits, temperature)
    _check_map(student_ids, teacher_ids, student_logits.shape[-1], teacher_logits.shape[-1])
    ls = restrict_to_map(F.log_softmax(student_logits.float() / temperature, dim=-1), student_ids)
    lt = restrict_to_map(F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1), teacher_ids)
    per_position = divergence_from_logprobs(ls, lt, kind=kind, beta=beta)
    if scale_by_t2:
        per_position = per_position * (temperature**2)
    return reduce_tokens(per_position, mask, reduction)


def unmatched_uld(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """ULD of the mass the map does not pair: each side's probabilities with its matched ids zeroed, sorted, L1.

    Shapes as in :func:`exact_map_divergence`. Not renormalised, so the term shrinks with the unmatched mass.
    """
    _check_shapes(student_logits, teacher_logits, temperature)
    _check_map(student_ids, teacher_ids, student_logits.shape[-1], teacher_logits.shape[-1])
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    p_s = p_s.masked_fill(_matched_mask(student_ids, p_s.shape[-1]), 0.0)
    p_t = p_t.masked_fill(_matched_mask(teacher_ids, p_t.shape[-1]), 0.0)
    per_position = sorted_l1(p_s, p_t)
    if scale_by_t2:
        per_position = per_position * (temperature**2)
    return reduce_tokens(per_position, mask, reduction)


def hybrid_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    *,
    exact_weight: float = 1.0,
    uld_weight: float = 1.0,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """``exact_weight`` * :func:`exact_map_divergence` + ``uld_weight`` * :func:`unmatched_uld`.

    Shapes and the other arguments as in :func:`exact_map_divergence`.
    """
    if exact_weight < 0 or uld_weight < 0:
        raise ValueError(f"exact_weight={exact_weight} and uld_weight={uld_weight} must both be >= 0")
    shared = {"temperature": temperature, "mask": mask, "reduction": reduction, "scale_by_t2": scale_by_t2}
    exact = exact_map_divergence(
        student_logits, teacher_logits, student_ids, teacher_ids, kind=kind, beta=beta, **shared
    )
    rest = unmatched_uld(student_logits, teacher_logits, student_ids, teacher_ids, **shared)
    return exact_weight * exact + uld_weight * rest


def matched_mass(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Share of softmax(logits / T) ``(..., V)`` that falls on ``ids`` ``(K,)``: ``(...)`` in [0, 1], no grad.

    For the teacher side this is how much of its mass the exact map can carry; ``1 - matched_mass`` is the tail.
    """
    with torch.no_grad():
        probs = F.softmax(logits.float() / temperature, dim=-1)
        return probs.index_select(-1, ids).sum(-1)
