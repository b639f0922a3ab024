"""Per-chunk closed-form losses and gradients for the fused vocabulary loss (see ``autograd.py``).

Every function here works on one chunk of C token rows whose student log-probabilities ``ls = log_softmax(z / T)``
(fp32, ``(C, V)``) are already computed, and returns the per-row divergence (unscaled, no T**2) while writing the
gradient of that divergence with respect to the *tempered* student logits ``s = z / T`` into ``out``.

Why closed forms rather than autograd inside the chunk: each autograd op on a ``(C, V)`` tensor allocates a fresh
buffer (on CPU large buffers are mmapped and page-faulted in on every use) and the backward of ``log_softmax`` +
``where`` + ``exp`` + ``mul`` takes several passes more than the formula needs. Here every full-vocabulary
operation writes into one of four reused buffers.

With q = softmax(s), p the teacher distribution and G = dL/d(log q), the chain rule through log_softmax is
dL/ds = G - q * sum(G). Per kind (beta is the mixing coefficient, m the mixture):

- forward KL   KL(p||q):                 dL/ds = q - p
- reverse KL   KL(q||p):                 dL/ds = q * (log q - log p - L)
- JSD(beta)    m = beta p + (1-beta) q:  G = (1-beta) q (log q - log m)      (dL/dq_i = (1-beta) log(q_i/m_i))
- skew KL      KL(p||m), m = a p + (1-a) q:        G = -(1-a) p q / m
- skew RKL     KL(q||m), m = a q + (1-a) p:        G = q (log q - log m + 1 - a q / m)
- TVD          0.5 sum|q - p|:                      G = 0.5 q sign(q - p)   (sign(0) = 0, as autograd's abs)
"""

from __future__ import annotations

import math

import torch

from ..divergences import LOG_FLOOR


def resolve_kind(kind: str, beta: float) -> str:
    """Map the beta endpoints onto the kind they are defined to be (as ``divergence_from_logprobs`` does)."""
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    if kind == "skew_kl" and beta == 0.0:
        return "forward_kl"
    if kind == "skew_rkl" and beta == 0.0:
        return "reverse_kl"
    if kind in ("skew_kl", "skew_rkl") and beta == 1.0:
        return "zero"  # the mixture equals the first argument: the divergence is identically 0
    return kind


def _log_mix_into(out: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """out = log(weight_a * a + (1 - weight_a) * b), in place in ``out`` (may not alias ``log_b``)."""
    torch.add(log_a, math.log(weight_a) - math.log1p(-weight_a), out=out)
    torch.logaddexp(out, log_b, out=out)
    return out.add_(math.log1p(-weight_a))


def dense_kind_grad(
    kind: str, beta: float, ls: torch.Tensor, lt: torch.Tensor, scratch: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Divergence rows and dL/ds for a dense teacher.

    Args:
        kind: a kind already passed through :func:`resolve_kind`.
        ls: ``(C, V)`` student log-probs, read only. lt: ``(C, V)`` teacher log-probs (clamped at ``LOG_FLOOR``);
            overwritten. scratch, out: ``(C, V)`` buffers; ``out`` receives dL/ds.
    Returns:
        ``(C,)`` fp32 divergence per row.
    """
    # Row sums go through torch.sum (cascade summation): a row dot product by bmm/gemm accumulates 10^5 terms in
    # fp32 and its error reaches the gradient of the kinds that subtract q * sum(G) (measured ~1e-4 at V = 128k).
    if kind == "forward_kl":
        p = torch.exp(lt, out=scratch)
        loss = lt.sub_(ls).mul_(p).sum(1)
        torch.exp(ls, out=out).sub_(p)
        return loss
    if kind == "reverse_kl":
        q = torch.exp(ls, out=scratch)
        diff = torch.sub(ls, lt, out=lt)
        loss = torch.mul(q, diff, out=out).sum(1)
        out.addcmul_(q, loss.unsqueeze(1).neg())  # q (log q - log p - L)
        return loss
    if kind == "jsd":
        log_m = _log_mix_into(out, lt, ls, beta)
        p = torch.exp(lt, out=scratch)
        loss_t = lt.sub_(log_m).mul_(p).sum(1)
        q = torch.exp(ls, out=scratch)
        ls_minus_m = torch.sub(ls, log_m, out=lt)
        loss_s = torch.mul(q, ls_minus_m, out=out).sum(1)
        out.addcmul_(q, loss_s.unsqueeze(1).neg()).mul_(1.0 - beta)
        return beta * loss_t + (1.0 - beta) * loss_s
    if kind == "skew_kl":
        log_m = _log_mix_into(out, lt, ls, beta)
        p = torch.exp(lt, out=scratch)
        loss = torch.sub(lt, log_m, out=lt).mul_(p).sum(1)
        g = torch.sub(ls, log_m, out=lt).exp_().mul_(p).mul_(-(1.0 - beta))
        sum_g = g.sum(1, keepdim=True)
        torch.exp(ls, out=out).mul_(sum_g.neg_()).add_(g)
        return loss
    if kind == "skew_rkl":
        log_m = _log_mix_into(out, ls, lt, beta)
        d = torch.sub(ls, log_m, out=lt)
        q = torch.exp(ls, out=scratch)
        loss = torch.mul(q, d, out=out).sum(1)
        out.add_(d.exp_().mul_(-beta).add_(1.0).mul_(q))  # G = q d + q (1 - beta e^d)
        sum_g = out.sum(1, keepdim=True)
        out.addcmul_(q, sum_g.neg_())
        return loss
    if kind == "tvd":
        q = torch.exp(ls, out=scratch)
        diff = torch.sub(q, lt.exp_(), out=lt)
        sign = torch.sign(diff, out=out)
        loss = 0.5 * diff.abs_().sum(1)
        sum_g = 0.5 * torch.mul(q, sign, out=lt).sum(1)
        out.mul_(0.5).sub_(sum_g.unsqueeze(1)).mul_(q)
        return loss
    if kind == "zero":
        out.zero_()
        return ls.new_zeros(ls.shape[0])
    raise ValueError(f"kind={kind!r} has no fused gradient")


def small_kind_grad(kind: str, beta: float, ls: torch.Tensor, lt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence rows and G = dL/d(log q) for small ``(C, K)`` log-distributions (the top-k + tail case).

    Plain (allocating) tensor code: K is the number of stored teacher ids + 1, so nothing here is vocabulary-sized.
    Returns ``(loss (C,), G (C, K))``.
    """
    if kind == "zero":
        return ls.new_zeros(ls.shape[0]), torch.zeros_like(ls)
    q, p = ls.exp(), lt.exp()
    if kind == "forward_kl":
        return (p * (lt - ls)).sum(-1), -p
    if kind == "reverse_kl":
        diff = ls - lt
        return (q * diff).sum(-1), q * (diff + 1.0)
    if kind == "tvd":
        sign = torch.sign(q - p)
        return 0.5 * (q - p).abs().sum(-1), 0.5 * q * sign
    if kind == "jsd":
        log_m = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        loss = beta * (p * (lt - log_m)).sum(-1) + (1.0 - beta) * (q * (ls - log_m)).sum(-1)
        return loss, (1.0 - beta) * q * (ls - log_m)
    if kind == "skew_kl":
        log_m = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        return (p * (lt - log_m)).sum(-1), -(1.0 - beta) * p * (ls - log_m).exp()
    if kind == "skew_rkl":
        log_m = torch.logaddexp(ls + math.log(beta), lt + math.log1p(-beta))
        diff = ls - log_m
        return (q * diff).sum(-1), q * (diff + 1.0 - beta * diff.exp())
    raise ValueError(f"kind={kind!r} has no fused gradient")


def sparse_kind_grad(
    kind: str,
    beta: float,
    ls: torch.Tensor,
    ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_tail: torch.Tensor | None,
    weights: torch.Tensor | None,
    scratch: torch.Tensor,
    out: torch.Tensor,
) -> torch.Tensor:
    """Divergence rows and dL/ds against sparse teacher targets (matches ``sparse_divergence_from_logprobs``).

    Args:
        ls: ``(C, V)`` student log-probs, read only. ids: ``(C, k)`` int64. teacher_logprobs: ``(C, k)`` fp32,
            clamped. teacher_tail: ``(C,)`` (top-k) or None. weights: ``(C, k)`` (sampled) or None.
        scratch, out: ``(C, V)`` buffers; ``out`` receives dL/ds.
    Returns:
        ``(C,)`` fp32 divergence per row.
    """
    picked = ls.gather(1, ids)
    if weights is not None:
        # Sampled forward KL: L = sum_j w_j (log p_j - log q_j); dL/ds = q * sum(w) - scatter(w).
        loss = (weights * (teacher_logprobs - picked)).sum(-1)
        torch.exp(ls, out=out).mul_(weights.sum(-1, keepdim=True))
        out.scatter_add_(1, ids, -weights)
        return loss
    # Student tail: log-sum-exp over the ids *not* stored, by masking them out of a copy (1 - sum(p) loses all
    # precision when the top-k mass is near 1). The same normalised exponentials give d(tail)/ds for the rest.
    rest = scratch.copy_(ls).scatter_(1, ids, 10.0 * LOG_FLOOR)
    rest_max = rest.amax(1, keepdim=True)
    rest.sub_(rest_max).exp_()
    rest_sum = rest.sum(1, keepdim=True)
    tail_raw = (rest_max + rest_sum.log()).squeeze(1)
    tail_live = tail_raw > LOG_FLOOR  # a clamped tail (ids cover the vocabulary) passes no gradient
    student_tail = tail_raw.clamp(min=LOG_FLOOR)
    loss, g = small_kind_grad(
        kind,
        beta,
        torch.cat([picked, student_tail.unsqueeze(1)], dim=1),
        torch.cat([teacher_logprobs, teacher_tail.unsqueeze(1)], dim=1),
    )
    g_ids, g_tail = g[:, :-1], torch.where(tail_live, g[:, -1], torch.zeros_like(g[:, -1]))
    # dL/ds_i = sum_j g_j [i = id_j] + g_tail [i in rest] q_i / q_tail - q_i * sum(g)
    sum_g = g_ids.sum(1, keepdim=True) + g_tail.unsqueeze(1)
    torch.exp(ls, out=out).mul_(sum_g.neg_())
    out.addcmul_(rest, (g_tail.unsqueeze(1) / rest_sum))
    out.scatter_add_(1, ids, g_ids)
    return loss
