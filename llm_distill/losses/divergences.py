"""Token-level divergences between teacher and student distributions.

Everything here is a pure function of tensors. Logits may be any floating dtype; the arithmetic is done in fp32
in log space. Conventions (see docs/architecture.md, "Semantics that must not drift"), with p_T = softmax(z_T / T)
and p_S = softmax(z_S / T):

- ``forward_kl``  KL(p_T || p_S)
- ``reverse_kl``  KL(p_S || p_T)
- ``jsd``         beta * KL(p_T || M) + (1 - beta) * KL(p_S || M),  M = beta * p_T + (1 - beta) * p_S.
                  As in TRL's GKD, beta = 0 is *defined* as forward KL and beta = 1 as reverse KL (the mixture
                  formula itself vanishes at both ends).
- ``skew_kl``     KL(p_T || beta * p_T + (1 - beta) * p_S)        (DistiLLM, Ko et al. 2024)
- ``skew_rkl``    KL(p_S || beta * p_S + (1 - beta) * p_T)
- ``tvd``         0.5 * sum |p_T - p_S|

A new divergence is added in three places that a test proves equal (``tests/test_fused_loss.py`` compares every
kind of ``DIVERGENCE_KINDS`` dense vs sparse vs fused, values and gradients): ``divergence_from_logprobs`` here (dense
and, through ``sparse.py``, the top-k + tail form), and its closed-form gradient in ``fused/kernels.py``
(``dense_kind_grad`` and ``small_kind_grad``). See docs/architecture.md, "Adding a divergence".

The result is multiplied by T**2 when ``scale_by_t2`` (Hinton et al. 2015: keeps gradient magnitudes comparable
across temperatures).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd")
REDUCTIONS = ("mean", "sum", "none")

# Floor for log-probabilities that may be exactly -inf (an empty tail bucket, a padded position). exp(-100) ~ 4e-44
# carries no mass that fp32 sums can see, differences of clamped entries stay finite and gradients NaN-free, and a
# teacher tail that rounding left at ~1e-7 costs ~1e-5 against a clamped student tail (at -1e4 it would be ~1e-3).
LOG_FLOOR = -100.0


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_kind(kind: str, beta: float, *, kind_field: str = "kind", beta_field: str = "beta") -> None:
    """The one check of a divergence name and its mixing coefficient; ``*_field`` name the settings in errors."""
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(
            f"{kind_field}={kind!r} is not a known divergence; expected one of {', '.join(DIVERGENCE_KINDS)}"
        )
    if not _is_number(beta) or not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"{beta_field}={beta!r} is not accepted; jsd/skew_kl/skew_rkl need a mixing coefficient in [0, 1]"
        )


def check_temperature(temperature, *, field: str = "temperature") -> None:
    """The one check of a softmax temperature: a finite number > 0."""
    if not _is_number(temperature) or temperature <= 0:
        raise ValueError(f"{field}={temperature!r} is not accepted; it must be a number > 0 (1.0 = no softening)")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the last dim; entries where p == 0 contribute exactly 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b) computed in log space (0 < weight_a < 1)."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def divergence_from_logprobs(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, *, kind: str = "forward_kl", beta: float = 0.5
) -> torch.Tensor:
    """Per-row divergence between two normalised log-distributions over the last dim.

    Args:
        student_logprobs: ``(..., C)`` fp32 log p_S (already tempered).
        teacher_logprobs: ``(..., C)`` fp32 log p_T (already tempered), no gradient expected.
    Returns:
        ``(...)`` fp32 divergence per row, unscaled (no T**2).
    """
    ls, lt = student_logprobs, teacher_logprobs
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return _kl(lt, ls)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return _kl(ls, lt)
    if kind == "jsd":
        log_m = _log_mix(lt, ls, beta)
        return beta * _kl(lt, log_m) + (1.0 - beta) * _kl(ls, log_m)
    if kind == "skew_kl":
        log_m = lt if beta == 1.0 else (ls if beta == 0.0 else _log_mix(lt, ls, beta))
        return _kl(lt, log_m)
    if kind == "skew_rkl":
        log_m = ls if beta == 1.0 else (lt if beta == 0.0 else _log_mix(ls, lt, beta))
        return _kl(ls, log_m)
    if kind == "tvd":
        return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)
    raise ValueError(f"kind={kind!r} is not a known divergence; expected one of {', '.join(DIVERGENCE_KINDS)}")


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Apply a bool ``mask`` over the leading dims and reduce.

    ``mean`` divides by the number of counted tokens and is exactly 0 (with finite, zero gradients) when nothing is
    counted. ``none`` returns the per-token values with uncounted entries set to 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; expected one of {', '.join(REDUCTIONS)}")
    if mask is not None:
        if mask.shape != per_token.shape:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} but the loss has leading dims {tuple(per_token.shape)}"
            )
        # where() rather than multiply: a NaN/inf at an uncounted position must not leak into the sum.
        per_token = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    count = per_token.numel() if mask is None else mask.sum()
    return total / torch.clamp(torch.as_tensor(count, device=total.device, dtype=total.dtype), min=1.0)


def divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    scale_by_t2: bool = True,
) -> torch.Tensor:
    """Temperature-softened divergence between dense student and teacher logits.

    Args:
        student_logits: ``(..., V)`` any float dtype; carries the gradient.
        teacher_logits: ``(..., V)`` any float dtype; treated as a constant target.
        kind: one of ``DIVERGENCE_KINDS``.
        temperature: T > 0; both sides are divided by T before the softmax.
        beta: mixing coefficient for ``jsd``, ``skew_kl`` and ``skew_rkl``.
        mask: bool ``(...)``; True where the token counts.
        reduction: ``mean`` over counted tokens, ``sum`` over counted tokens, or ``none`` (per token, ``(...)``).
        scale_by_t2: multiply by T**2.
    Returns:
        fp32 scalar (``mean``/``sum``) or ``(...)`` tensor (``none``).
    """
    check_kind(kind, beta)
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "slice both to the shared vocabulary first"
        )
    ls = F.log_softmax(student_logits.float() / temperature, dim=-1)
    lt = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_token = divergence_from_logprobs(ls, lt, kind=kind, beta=beta)
    if scale_by_t2:
        per_token = per_token * (temperature**2)
    return reduce_tokens(per_token, mask, reduction)


def hard_ce(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy against hard labels, in fp32.

    Args:
        logits: ``(..., C)``; labels: ``(...)`` int64 with ``ignore_index`` where the token does not count.
        Causal LMs must shift before calling (logits[:, :-1] against labels[:, 1:]).
    Returns:
        scalar for ``mean``/``sum`` (0 when nothing counts), ``(...)`` for ``none``.
    """
    mask = labels != ignore_index
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), safe_labels.reshape(-1), reduction="none"
    ).view(labels.shape)
    return reduce_tokens(per_token, mask, reduction)
