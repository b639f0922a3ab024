"""Fused, chunked lm_head + divergence: the vocabulary loss without the ``N x V`` student logits.

For N token rows the student logits are produced ``chunk_size`` rows at a time from the final hidden states and the
lm_head, turned into the divergence against the teacher (dense logits, a live teacher's hidden states and lm_head,
or sparse top-k / sampled targets) and the hard-label cross-entropy, and immediately into the gradients with respect
to the hidden states, the lm_head weight and its bias, using the closed forms in ``kernels.py``. Only
vocabulary-sized buffers of ``chunk_size`` rows (at most two fp32 ones, one bf16/fp16 one for low-precision weights,
and one or two 64 MB blocks; reused across chunks, see ``loop.py``) are ever allocated, so peak memory grows
with the chunk, not with N.

Why the gradients are computed in the forward pass: the softmax, the teacher distribution and the logits matmul
are all needed by both the loss and its gradient, so doing both in one pass costs 3 matmuls per chunk instead of 4
and one softmax instead of two. The gradient is precomputed for ``kd_weight * kd_sum + ce_weight * ce_sum``; in
backward, when the incoming gradients are proportional to ``(kd_weight, ce_weight)`` (the intended use, including
any later division by a token count or loss scaling) the stored gradients are scaled; any other combination (e.g.
``ce_sum`` only logged while ``ce_weight != 0``) is still exact: the chunk loop is re-run with the incoming
gradients as weights.
"""

from __future__ import annotations

import torch

from ..divergences import LOG_FLOOR, check_kind, check_temperature
from ..sparse import SparseTargets
from .kernels import resolve_kind
from .loop import Problem, fused_pass


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that one fp32 chunk buffer is about 128 MB: 1024 rows at V = 32k, 256 at 128k.

    Larger chunks make the matmuls more efficient (the weight gradient is read and written once per chunk) while
    memory grows with chunk * V; 32..1024 rows, a multiple of 32.
    """
    return max(32, min(1024, ((1 << 25) // vocab_size) // 32 * 32))


def _expand_hidden_grad(p: Problem, grad: torch.Tensor | None, like: tuple) -> torch.Tensor | None:
    """Scatter the (R, H) gradient of the counted rows back to the caller's (N, H) rows (``like``: shape, dtype)."""
    if grad is None:
        return None
    shape, dtype = like
    grad = grad.to(dtype)
    if p.rows is None:
        return grad
    full = grad.new_zeros(shape)
    full.index_copy_(0, p.rows, grad)
    return full


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, problem: Problem, kd_weight: float, ce_weight: float):
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        kd, ce, gh, gw, gb = fused_pass(problem, kd_weight, ce_weight, need)
        # The inputs stay referenced until backward, for the exact re-run when the stored gradients do not apply.
        ctx.problem, ctx.need, ctx.like = problem, need, (hidden.shape, hidden.dtype)
        ctx.scales = (kd_weight if problem.has_kd else 0.0, ce_weight if problem.has_ce else 0.0)
        ctx.grads = (gh, gw, gb)
        return kd, ce

    @staticmethod
    def backward(ctx, g_kd, g_ce):
        p: Problem = ctx.problem
        a = float(g_kd) if (g_kd is not None and p.has_kd) else 0.0
        c = float(g_ce) if (g_ce is not None and p.has_ce) else 0.0
        kd_w, ce_w = ctx.scales
        factor = _proportional(a, c, kd_w, ce_w)
        stored, ctx.grads = ctx.grads, None  # consumed: a second backward (retain_graph) recomputes
        if factor is not None and stored is not None:
            # In place: these buffers belong to this node, and a scaled copy would double the V x H peak.
            gh, gw, gb = (None if g is None else (g if factor == 1.0 else g.mul_(factor)) for g in stored)
        else:
            _, _, gh, gw, gb = fused_pass(p, a, c, ctx.need)
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
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    ignore_index: int = -100,
    return_top1: bool = False,
) -> tuple[torch.Tensor, ...]:
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
        chunk_size: token rows per chunk. None: :func:`auto_chunk_size` (256 rows at V = 128k, 1024 at 32k).
            Vocabulary-sized memory is about ``2 * chunk_size * V * 4`` bytes plus one or two 64 MB blocks (and
            ``chunk_size * V * 2`` for bf16/fp16), besides the ``V x H`` weight gradient.
        vocab_size: use only the first ``vocab_size`` columns of both sides (padded embedding matrices). Required
            when the student and teacher vocabularies differ.
        return_top1: also return the student's and (dense teachers) the teacher's most likely id per row, ``(N,)``
            int64, -1 on rows that are not counted (None for the teacher with ``sparse_targets``).
    Returns:
        ``(kd_sum, ce_sum)``: fp32 scalars, both differentiable; with ``return_top1``, then ``(student_top1,
        teacher_top1)``.
    """
    p = _build_problem(
        student_hidden, lm_head_weight, lm_head_bias, teacher_logits, teacher_hidden, teacher_weight, teacher_bias,
        sparse_targets, labels, mask, kind, temperature, beta, scale_by_t2, chunk_size, vocab_size, ignore_index,
    )  # fmt: skip
    p.want_top1 = return_top1
    params = (student_hidden, lm_head_weight, lm_head_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params):
        kd, ce = _FusedLoss.apply(student_hidden, lm_head_weight, lm_head_bias, p, float(kd_weight), float(ce_weight))
    else:
        kd, ce, *_ = fused_pass(p, 0.0, 0.0, (False, False, False))
    if not return_top1:
        return kd, ce
    n = student_hidden.shape[0]
    return kd, ce, _expand_rows(p, p.student_top1, n), _expand_rows(p, p.teacher_top1, n)


def _expand_rows(p: Problem, values: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """(R,) values of the counted rows -> (N,) with -1 on the rows that were not counted."""
    if values is None or p.rows is None:
        return values
    full = values.new_full((n,), -1)
    full[p.rows] = values
    return full


def _build_problem(
    hidden, weight, bias, teacher_logits, teacher_hidden, teacher_weight, teacher_bias, sparse, labels, mask,
    kind, temperature, beta, scale_by_t2, chunk_size, vocab_size, ignore_index,
) -> Problem:  # fmt: skip
    check_kind(kind, beta)
    check_temperature(temperature)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 (or None for auto_chunk_size)")
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
    return Problem(
        hidden=take(hidden.detach()).to(dtype),
        weight=weight.detach(),
        bias=None if bias is None else bias.detach(),
        vocab=vocab_size,
        rows=rows,
        kind=resolve_kind(kind, beta),
        beta=beta,
        temperature=float(temperature),
        t2=float(temperature) ** 2 if scale_by_t2 else 1.0,
        chunk_size=chunk_size or auto_chunk_size(vocab_size),
        kd_mask=take(kd_mask),
        labels=take(labels),
        ce_mask=take(ce_mask),
        teacher_logits=None if teacher_logits is None else teacher_logits.detach(),
        teacher_hidden=None if teacher_hidden is None else take(teacher_hidden.detach()).to(teacher_weight.dtype),
        teacher_weight=None if teacher_weight is None else teacher_weight.detach(),
        teacher_bias=None if teacher_bias is None else teacher_bias.detach(),
        sparse=sparse,
    )
