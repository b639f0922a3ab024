"""Fused, chunked lm_head + divergence: the vocabulary loss without the ``N x V`` student logits.

For N token rows the student logits are produced ``chunk_size`` rows at a time from the final hidden states and the
lm_head, turned into the divergence against the teacher (dense logits, a live teacher's hidden states and lm_head,
or sparse top-k / sampled targets) and the hard-label cross-entropy, and immediately into the gradients with respect
to the hidden states, the lm_head weight and its bias, using the closed forms in ``fused_kernels.py``. Only
``(chunk_size, V)`` buffers are ever allocated (four fp32 ones, reused across chunks, plus one in the parameter
dtype for bf16/fp16), so peak memory grows with the chunk, not with N.

Why the gradients are computed in the forward pass: the softmax, the teacher distribution and the logits matmul
are all needed by both the loss and its gradient, so doing both in one pass costs 3 matmuls per chunk instead of 4
and one softmax instead of two. The gradient is precomputed for ``kd_weight * kd_sum + ce_weight * ce_sum``; in
backward, when the incoming gradients are proportional to ``(kd_weight, ce_weight)`` (the intended use, including
any later division by a token count or loss scaling) the stored gradients are scaled; any other combination (e.g.
``ce_sum`` only logged while ``ce_weight != 0``) is still exact: the chunk loop is re-run with the incoming
gradients as weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .divergences import LOG_FLOOR, check_kind
from .fused_kernels import dense_kind_grad, resolve_kind, sparse_kind_grad
from .sparse import SparseTargets


@dataclass
class _Problem:
    """Validated inputs, restricted to the counted rows (``rows`` maps them back to the caller's N rows)."""

    hidden: torch.Tensor  # (R, H) in the lm_head dtype
    weight: torch.Tensor  # (V_full, H)
    bias: torch.Tensor | None  # (V_full,)
    vocab: int
    rows: torch.Tensor | None  # (R,) int64 indices into the N input rows; None when every row counts
    n_rows: int
    kind: str  # resolved (beta endpoints mapped)
    beta: float
    temperature: float
    t2: float
    chunk_size: int
    kd_mask: torch.Tensor | None  # (R,) bool, None when no teacher
    labels: torch.Tensor | None  # (R,) int64, 0 where not counted
    ce_mask: torch.Tensor | None  # (R,) bool
    teacher_logits: torch.Tensor | None = None  # (N, V_T) (not compacted: read row by row)
    teacher_hidden: torch.Tensor | None = None  # (R, H_T)
    teacher_weight: torch.Tensor | None = None
    teacher_bias: torch.Tensor | None = None
    sparse: SparseTargets | None = None  # (R, k)

    @property
    def has_kd(self) -> bool:
        return self.kd_mask is not None

    @property
    def has_ce(self) -> bool:
        return self.labels is not None


def _teacher_chunk(p: _Problem, start: int, end: int, out: torch.Tensor, low: dict) -> None:
    """Write the teacher's raw logits for rows [start, end) into the fp32 ``out`` (C, V)."""
    c, v = end - start, p.vocab
    if p.teacher_logits is not None:
        src = p.teacher_logits[:, :v]
        idx = None if p.rows is None else p.rows[start:end]
        if src.dtype == torch.float32:
            if idx is None:
                out.copy_(src[start:end])
            else:
                torch.index_select(src, 0, idx, out=out)
            return
        buf = _low_buffer(low, "teacher", src.dtype, out.shape)[:c]
        if idx is None:
            buf.copy_(src[start:end])
        else:
            torch.index_select(src, 0, idx, out=buf)
        out.copy_(buf)
        return
    h, w = p.teacher_hidden[start:end], p.teacher_weight[:v]
    b = None if p.teacher_bias is None else p.teacher_bias[:v]
    target = out if w.dtype == torch.float32 else _low_buffer(low, "teacher", w.dtype, out.shape)[:c]
    if b is None:
        torch.mm(h, w.t(), out=target)
    else:
        torch.addmm(b, h, w.t(), out=target)
    if target is not out:
        out.copy_(target)


def _low_buffer(cache: dict, name: str, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
    key = (name, dtype)
    if key not in cache:
        cache[key] = torch.empty(shape, dtype=dtype)
    return cache[key]


def _fused_pass(
    p: _Problem, kd_scale: float, ce_scale: float, need: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the chunks: loss sums and (where ``need`` says) gradients of ``kd_scale*kd + ce_scale*ce``.

    Returns ``(kd_sum, ce_sum, grad_hidden (R, H) | None, grad_weight (V_full, H) | None, grad_bias | None)``.
    """
    need_h, need_w, need_b = need
    any_grad = need_h or need_w or need_b
    kd_grad = any_grad and p.has_kd and kd_scale != 0.0
    ce_grad = any_grad and p.has_ce and ce_scale != 0.0
    any_grad = kd_grad or ce_grad
    r, hdim = p.hidden.shape
    v, temp, dtype, device = p.vocab, p.temperature, p.weight.dtype, p.hidden.device
    w = p.weight[:v]
    b = None if p.bias is None else p.bias[:v]

    kd_total = torch.zeros((), dtype=torch.float32, device=device)
    ce_total = torch.zeros((), dtype=torch.float32, device=device)
    grad_h = torch.empty(r, hdim, dtype=dtype, device=device) if any_grad and need_h else None
    grad_w = torch.zeros_like(p.weight) if any_grad and need_w else None
    grad_b = torch.zeros(v, dtype=torch.float32, device=device) if any_grad and need_b and b is not None else None

    c_max = min(p.chunk_size, max(r, 1))
    shape = torch.Size((c_max, v))
    ls_buf, lt_buf, scratch_buf, out_buf = (torch.empty(shape, dtype=torch.float32, device=device) for _ in range(4))
    low: dict = {}
    z_low = None if dtype == torch.float32 else _low_buffer(low, "student", dtype, shape)
    kd_coef = p.t2 * kd_scale / temp  # d/dz of (kd_scale * T^2 * L(z / T)) = kd_scale * T^2 / T * dL/ds

    for start in range(0, r, p.chunk_size):
        end = min(start + p.chunk_size, r)
        c = end - start
        h = p.hidden[start:end]
        ls, out = ls_buf[:c], out_buf[:c]
        target = ls if z_low is None else z_low[:c]
        if b is None:
            torch.mm(h, w.t(), out=target)
        else:
            torch.addmm(b, h, w.t(), out=target)
        if target is not ls:
            ls.copy_(target)
        if temp != 1.0:
            ls.div_(temp)
        torch._log_softmax(ls, 1, False, out=ls)

        wrote_out = False
        if p.has_kd:
            kd_mask = p.kd_mask[start:end]
            if p.sparse is not None:
                sp = p.sparse
                tail = None if sp.tail_logprobs is None else sp.tail_logprobs[start:end]
                weights = None if sp.weights is None else sp.weights[start:end]
                rows = sparse_kind_grad(
                    p.kind, p.beta, ls, sp.ids[start:end], sp.logprobs[start:end], tail, weights,
                    scratch_buf[:c], out,
                )  # fmt: skip
            else:
                lt = lt_buf[:c]
                _teacher_chunk(p, start, end, lt, low)
                if temp != 1.0:
                    lt.div_(temp)
                torch._log_softmax(lt, 1, False, out=lt)
                lt.clamp_(min=LOG_FLOOR)  # -inf teacher logits (masked vocab) would give 0 * -inf = NaN
                rows = dense_kind_grad(p.kind, p.beta, ls, lt, scratch_buf[:c], out)
            kd_total += torch.where(kd_mask, rows, torch.zeros_like(rows)).sum() * p.t2
            if kd_grad:
                out.mul_((kd_mask.to(torch.float32) * kd_coef).unsqueeze(1))
                wrote_out = True

        if p.has_ce:
            labels, ce_mask = p.labels[start:end].unsqueeze(1), p.ce_mask[start:end]
            soft = scratch_buf[:c]
            if temp == 1.0:
                torch.exp(ls, out=soft)
                rows = -ls.gather(1, labels).squeeze(1)
                norm = None
            else:
                # softmax(z) = softmax(T * ls): the T * lse(z / T) shift cancels, so z itself is not needed again.
                torch.mul(ls, temp, out=soft)
                shift = soft.amax(1, keepdim=True)
                soft.sub_(shift).exp_()
                norm = soft.sum(1, keepdim=True)
                rows = (shift + norm.log()).squeeze(1) - temp * ls.gather(1, labels).squeeze(1)
            ce_total += torch.where(ce_mask, rows, torch.zeros_like(rows)).sum()
            if ce_grad:
                coef = (ce_mask.to(torch.float32) * ce_scale).unsqueeze(1)
                scaled = coef if norm is None else coef / norm
                if wrote_out:
                    out.addcmul_(soft, scaled)
                else:
                    torch.mul(soft, scaled, out=out)
                    wrote_out = True
                out.scatter_add_(1, labels, -coef)

        if not wrote_out:
            continue
        g = out if z_low is None else z_low[:c].copy_(out)
        if grad_h is not None:
            torch.mm(g, w, out=grad_h[start:end])
        if grad_w is not None:
            grad_w[:v].addmm_(g.t(), h)
        if grad_b is not None:
            grad_b += out.sum(0)

    if grad_b is not None:
        full = torch.zeros_like(p.bias)
        full[:v] = grad_b.to(p.bias.dtype)
        grad_b = full
    if not any_grad and any(need):
        # Nothing counted (or both scales 0): the gradient is exactly zero, not missing.
        grad_h = torch.zeros(r, hdim, dtype=dtype, device=device) if need_h else None
        grad_w = torch.zeros_like(p.weight) if need_w else None
        grad_b = torch.zeros_like(p.bias) if need_b and p.bias is not None else None
    return kd_total, ce_total, grad_h, grad_w, grad_b


def _expand_hidden_grad(p: _Problem, grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Scatter the (R, H) gradient of the counted rows back to the caller's (N, H) rows."""
    if grad is None:
        return None
    grad = grad.to(like.dtype)
    if p.rows is None:
        return grad
    full = torch.zeros_like(like)
    full.index_copy_(0, p.rows, grad)
    return full


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, problem: _Problem, kd_weight: float, ce_weight: float):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        kd, ce, gh, gw, gb = _fused_pass(problem, kd_weight, ce_weight, need)
        ctx.problem, ctx.need, ctx.like = problem, need, hidden
        ctx.scales = (kd_weight if problem.has_kd else 0.0, ce_weight if problem.has_ce else 0.0)
        ctx.grads = (gh, gw, gb)
        return kd, ce

    @staticmethod
    def backward(ctx, g_kd, g_ce):
        p: _Problem = ctx.problem
        a = float(g_kd) if (g_kd is not None and p.has_kd) else 0.0
        c = float(g_ce) if (g_ce is not None and p.has_ce) else 0.0
        kd_w, ce_w = ctx.scales
        factor = _proportional(a, c, kd_w, ce_w)
        if factor is not None:
            gh, gw, gb = (None if g is None else g * factor for g in ctx.grads)
        else:
            _, _, gh, gw, gb = _fused_pass(p, a, c, ctx.need)
        ctx.grads = None
        return _expand_hidden_grad(p, gh, ctx.like), gw, gb, None, None, None


def _proportional(a: float, c: float, kd_w: float, ce_w: float) -> float | None:
    """s with (a, c) == s * (kd_w, ce_w) up to rounding, else None (the stored gradients cannot be reused)."""
    if kd_w == 0.0 and ce_w == 0.0:
        return 0.0 if a == 0.0 and c == 0.0 else None
    s = a / kd_w if kd_w != 0.0 else c / ce_w
    tol = 1e-6 * (abs(a) + abs(c)) + 1e-30
    return s if abs(a - s * kd_w) <= tol and abs(c - s * ce_w) <= tol else None


def fused_distillation_loss(
    student_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    sparse_targets: SparseTargets | None = None,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    scale_by_t2: bool = True,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
    chunk_size: int = 256,
    vocab_size: int | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over counted tokens of the divergence and of the hard-label CE, without materialising student logits.

    Equals ``divergence(h @ W.T + b, teacher, mask=mask, reduction="sum", ...)`` (or ``sparse_divergence`` for
    ``sparse_targets``) and ``hard_ce(h @ W.T + b, labels, reduction="sum")`` with both logits sliced to
    ``vocab_size`` columns, and so are the gradients with respect to ``student_hidden``, ``lm_head_weight`` and
    ``lm_head_bias``. The teacher never receives a gradient.

    Args:
        student_hidden: ``(N, H)`` final (normed) student hidden states, one row per token position.
        lm_head_weight: ``(V, H)``; lm_head_bias: ``(V,)`` or None. Softmax and losses run in fp32; the matmuls
            and the weight-gradient accumulation run in the weight's dtype.
        teacher_logits: ``(N, V_T)`` dense teacher logits, any float dtype; or
        teacher_hidden: ``(N, H_T)`` with teacher_weight ``(V_T, H_T)`` (and teacher_bias): the teacher's logits
            are then produced chunk by chunk too; or
        sparse_targets: top-k + tail or sampled targets with ``(N, k)`` tensors (see ``losses.sparse``).
            Give at most one teacher source; with none, ``kd_sum`` is 0 and only the CE is computed.
        labels: ``(N,)`` int64 target ids, ``ignore_index`` where not counted (already shifted for causal LMs).
        mask: ``(N,)`` bool, True where the divergence counts. None: ``labels != ignore_index`` when labels are
            given, else every row.
        kind, temperature, beta, scale_by_t2: as in :func:`llm_distill.losses.divergence`.
        kd_weight, ce_weight: the weights the caller applies in ``kd_weight * kd_sum + ce_weight * ce_sum``. The
            gradient of that combination is computed during the forward pass; any other combination is still exact
            but costs a second pass in backward.
        chunk_size: token rows per chunk; memory is about ``5 * chunk_size * V * 4`` bytes.
        vocab_size: use only the first ``vocab_size`` columns of both sides (padded embedding matrices). Required
            when the student and teacher vocabularies differ.
    Returns:
        ``(kd_sum, ce_sum)``: fp32 scalars, both differentiable.
    """
    p = _build_problem(
        student_hidden, lm_head_weight, lm_head_bias, teacher_logits, teacher_hidden, teacher_weight, teacher_bias,
        sparse_targets, labels, mask, kind, temperature, beta, scale_by_t2, chunk_size, vocab_size, ignore_index,
    )  # fmt: skip
    params = (student_hidden, lm_head_weight, lm_head_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params):
        return _FusedLoss.apply(student_hidden, lm_head_weight, lm_head_bias, p, float(kd_weight), float(ce_weight))
    kd, ce, *_ = _fused_pass(p, 0.0, 0.0, (False, False, False))
    return kd, ce


def _build_problem(
    hidden, weight, bias, teacher_logits, teacher_hidden, teacher_weight, teacher_bias, sparse, labels, mask,
    kind, temperature, beta, scale_by_t2, chunk_size, vocab_size, ignore_index,
) -> _Problem:  # fmt: skip
    check_kind(kind, beta)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"student_hidden {tuple(hidden.shape)} and lm_head_weight {tuple(weight.shape)} must be (N, H) and "
            "(V, H); flatten (B, S, H) hidden states with .reshape(-1, H) first"
        )
    n = hidden.shape[0]
    sources = [s for s, t in (("teacher_logits", teacher_logits), ("teacher_hidden", teacher_hidden),
                              ("sparse_targets", sparse)) if t is not None]  # fmt: skip
    if len(sources) > 1:
        raise ValueError(f"give one teacher source, got {', '.join(sources)}")
    if teacher_hidden is not None and teacher_weight is None:
        raise ValueError("teacher_hidden needs teacher_weight (the teacher's lm_head weight, (V_T, H_T))")
    widths = {"lm_head_weight": weight.shape[0]}
    if teacher_logits is not None:
        widths["teacher_logits"] = teacher_logits.shape[-1]
    if teacher_hidden is not None:
        widths["teacher_weight"] = teacher_weight.shape[0]
    if vocab_size is None:
        if len(set(widths.values())) > 1:
            raise ValueError(
                f"vocabulary widths differ ({widths}); pass vocab_size=<number of real tokens> to use the shared ids"
            )
        vocab_size = weight.shape[0]
    if not 0 < vocab_size <= min(widths.values()):
        raise ValueError(f"vocab_size={vocab_size} must be in [1, {min(widths.values())}] (widths {widths})")
    for name, t in (("teacher_logits", teacher_logits), ("teacher_hidden", teacher_hidden), ("mask", mask),
                    ("labels", labels)):  # fmt: skip
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} rows but student_hidden has {n}")
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({n},)")

    has_kd = bool(sources)
    ce_mask = None if labels is None else labels != ignore_index
    kd_mask = None
    if has_kd:
        if mask is not None:
            kd_mask = mask.bool()
        else:
            kd_mask = ce_mask if ce_mask is not None else torch.ones(n, dtype=torch.bool, device=hidden.device)
    counted = kd_mask if ce_mask is None else (ce_mask if kd_mask is None else kd_mask | ce_mask)
    rows = None
    if counted is not None and not bool(counted.all()):
        rows = counted.nonzero().squeeze(1)

    def take(t):
        return t if (t is None or rows is None) else t.index_select(0, rows)

    if ce_mask is not None:
        bad = ce_mask & ((labels < 0) | (labels >= vocab_size))
        if bool(bad.any()):
            raise ValueError(
                f"labels hold ids outside [0, {vocab_size}) at counted positions, e.g. {labels[bad][:4].tolist()}"
            )
        labels = torch.where(ce_mask, labels, torch.zeros_like(labels)).long()
    if sparse is not None:
        if sparse.is_sampled and kind != "forward_kl":
            raise ValueError(
                f"kind={kind!r} has no unbiased estimator on sampled teacher targets; use kind='forward_kl' or a "
                "top-k store"
            )
        if sparse.ids.shape[0] != n:
            raise ValueError(f"sparse_targets.ids has {sparse.ids.shape[0]} rows but student_hidden has {n}")
        sparse = sparse.map(take)
        ids = sparse.ids.long()
        live = take(kd_mask)
        if bool((live.unsqueeze(1) & ((ids < 0) | (ids >= vocab_size))).any()):
            raise ValueError(f"sparse_targets.ids hold ids outside [0, {vocab_size}) at counted positions")
        # Padded (uncounted) rows may hold any id; clamp them so gather/scatter stay in range.
        ids = ids.clamp(0, vocab_size - 1)
        sparse = SparseTargets(
            ids,
            sparse.logprobs.detach().float().clamp(min=LOG_FLOOR),
            None if sparse.tail_logprobs is None else sparse.tail_logprobs.detach().float().clamp(min=LOG_FLOOR),
            None if sparse.weights is None else sparse.weights.detach().float(),
        )
    dtype = weight.dtype
    return _Problem(
        hidden=take(hidden.detach()).to(dtype),
        weight=weight.detach(),
        bias=None if bias is None else bias.detach(),
        vocab=vocab_size,
        rows=rows,
        n_rows=n,
        kind=resolve_kind(kind, beta),
        beta=beta,
        temperature=float(temperature),
        t2=float(temperature) ** 2 if scale_by_t2 else 1.0,
        chunk_size=chunk_size,
        kd_mask=take(kd_mask),
        labels=take(labels),
        ce_mask=take(ce_mask),
        teacher_logits=None if teacher_logits is None else teacher_logits.detach(),
        teacher_hidden=None if teacher_hidden is None else take(teacher_hidden.detach()).to(teacher_weight.dtype),
        teacher_weight=None if teacher_weight is None else teacher_weight.detach(),
        teacher_bias=None if teacher_bias is None else teacher_bias.detach(),
        sparse=sparse,
    )
