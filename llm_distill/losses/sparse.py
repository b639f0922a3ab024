"""Divergences against sparse teacher targets read from a logit store.

Two sparse forms of a teacher distribution are supported:

* **top-k + tail** (``SparseTargets.tail_logprobs`` set): the teacher's k most likely ids with their
  log-probabilities at the training temperature, plus the log of the remaining mass. The student's tempered
  distribution is restricted to the same k ids plus one "tail" class holding all of the student's remaining
  mass, and the chosen divergence is computed between these two (k+1)-class distributions. At k = V both tails
  are empty and the result equals the dense divergence.
* **sampled** (``SparseTargets.weights`` set): ids drawn from the teacher distribution, with weights summing to
  one per token (count / number of draws). Sum_j w_j * (log p_T(j) - log p_S(j)) is an unbiased estimate of
  KL(p_T || p_S) and its gradient, q - E[w], is unbiased too (Sparse Logit Sampling, Anshumann et al., ACL 2025).
  Only ``forward_kl`` has such an estimator; other kinds are refused.

Teacher log-probabilities are stored already tempered (softmax(z_T / T)), so ``temperature`` here only tempers
the student and sets the T**2 factor; re-tempering stored values is wrong and the store refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .divergences import LOG_FLOOR, check_kind, check_temperature, divergence_from_logprobs, reduce_tokens


@dataclass
class SparseTargets:
    """Sparse teacher targets for ``(...)`` token positions.

    ids: ``(..., k)`` int64 token ids. logprobs: ``(..., k)`` teacher log-probabilities at the training
    temperature. tail_logprobs: ``(...)`` log(1 - sum(exp(logprobs))) for top-k targets. weights: ``(..., k)``
    sampling weights (sum to 1 per token) for sampled targets. Exactly one of ``tail_logprobs``/``weights`` is set.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logprobs: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.tail_logprobs is None) == (self.weights is None):
            raise ValueError("SparseTargets needs exactly one of tail_logprobs (top-k) or weights (sampled)")

    @property
    def is_sampled(self) -> bool:
        return self.weights is not None

    def to(self, device: torch.device | str) -> SparseTargets:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return SparseTargets(move(self.ids), move(self.logprobs), move(self.tail_logprobs), move(self.weights))

    def map(self, fn) -> SparseTargets:
        """Apply ``fn`` to every tensor (e.g. a slice over the token dims)."""
        keep = lambda t: None if t is None else fn(t)  # noqa: E731
        return SparseTargets(fn(self.ids), fn(self.logprobs), keep(self.tail_logprobs), keep(self.weights))


def student_topk_logprobs(student_logprobs: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Restrict a full ``(..., V)`` log-distribution to ``ids`` (..., k) plus a tail class.

    The tail is the log-sum-exp of every other entry, computed by masking the chosen ids out rather than by
    log(1 - sum p), which loses all precision when the top-k mass is close to 1.
    """
    picked = student_logprobs.gather(-1, ids)
    # A finite fill (not -inf): when the ids cover the whole vocabulary, logsumexp over all -inf has a NaN gradient.
    rest = student_logprobs.scatter(-1, ids, 10.0 * LOG_FLOOR)
    tail = torch.logsumexp(rest, dim=-1).clamp(min=LOG_FLOOR)
    return picked, tail


def sparse_divergence(
    student_logits: torch.Tensor,
    targets: SparseTargets,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Divergence between dense student logits ``(..., V)`` and sparse teacher targets over ``(...)`` tokens.

    Arguments and return value as in :func:`llm_distill.losses.divergence`.
    """
    check_kind(kind, beta)
    check_temperature(temperature)
    ls_full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_token = sparse_divergence_from_logprobs(ls_full, targets, kind=kind, beta=beta)
    if scale_by_t2:
        per_token = per_token * (temperature**2)
    return reduce_tokens(per_token, mask, reduction)


def sparse_divergence_from_logprobs(
    student_logprobs: torch.Tensor, targets: SparseTargets, *, kind: str, beta: float
) -> torch.Tensor:
    """Per-token sparse divergence from full tempered student log-probs ``(..., V)``; unscaled."""
    ids = targets.ids.long()
    # Clamp: padded (uncounted) positions may hold -inf, and -inf * 0 in the backward pass would be NaN.
    teacher = targets.logprobs.detach().float().clamp(min=LOG_FLOOR)
    if targets.is_sampled:
        if kind != "forward_kl":
            raise ValueError(
                f"kind={kind!r} has no unbiased estimator on sampled teacher targets; use kind='forward_kl' or a "
                "top-k store"
            )
        picked = student_logprobs.gather(-1, ids)
        weights = targets.weights.detach().float()
        return (weights * (teacher - picked)).sum(-1)
    picked, student_tail = student_topk_logprobs(student_logprobs, ids)
    teacher_tail = targets.tail_logprobs.detach().float().clamp(min=LOG_FLOOR)
    ls = torch.cat([picked, student_tail.unsqueeze(-1)], dim=-1)
    lt = torch.cat([teacher, teacher_tail.unsqueeze(-1)], dim=-1)
    return divergence_from_logprobs(ls, lt, kind=kind, beta=beta)
