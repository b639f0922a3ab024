"""The chunk loop behind ``fused_distillation_loss``: buffers, matmuls and the combination of KD and CE gradients.

Two levels: the matmuls run on chunks of ``chunk_size`` rows (large enough for an efficient GEMM), and the
element-wise work (softmaxes, divergence, gradient) runs on row blocks inside the chunk of at most ``BLOCK_ELEMENTS``
values, with block-sized scratch buffers. Vocabulary-sized memory is two fp32 ``(chunk, V)`` buffers (student
log-probs, which become the gradient in place, and teacher log-probs; one for sparse targets or CE alone), one or two
block-sized scratch buffers (one for forward KL), and one ``(chunk, V)`` buffer in the parameter dtype when it is
bf16/fp16. All are allocated once per call and reused for every chunk: a fresh vocabulary-sized allocation per chunk
costs page faults on CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..divergences import LOG_FLOOR
from ..sparse import SparseTargets
from .kernels import dense_kind_grad, sparse_kind_grad


@dataclass
class Problem:
    """Validated inputs, restricted to the counted rows (``rows`` maps them back to the caller's N rows)."""

    hidden: torch.Tensor  # (R, H) in the lm_head dtype
    weight: torch.Tensor  # (V_full, H)
    bias: torch.Tensor | None  # (V_full,)
    vocab: int
    rows: torch.Tensor | None  # (R,) int64 indices into the N input rows; None when every row counts
    kind: str  # resolved (beta endpoints mapped)
    beta: float
    temperature: float
    t2: float
    chunk_size: int
    kd_mask: torch.Tensor | None  # (R,) bool, None when no teacher
    labels: torch.Tensor | None  # (R,) int64, 0 where not counted
    ce_mask: torch.Tensor | None  # (R,) bool
    teacher_logits: torch.Tensor | None = None  # (N, V_T) (not compacted: read chunk by chunk)
    teacher_hidden: torch.Tensor | None = None  # (R, H_T)
    teacher_weight: torch.Tensor | None = None
    teacher_bias: torch.Tensor | None = None
    sparse: SparseTargets | None = None  # (R, k)
    want_top1: bool = False  # also record each row's top-1 ids (the agreement metric), written by fused_pass:
    student_top1: torch.Tensor | None = None  # (R,) int64
    teacher_top1: torch.Tensor | None = None  # (R,) int64, dense teachers only (sparse targets carry their own)

    @property
    def has_kd(self) -> bool:
        return self.kd_mask is not None

    @property
    def has_ce(self) -> bool:
        return self.labels is not None


class _Buffers:
    """Lazily allocated ``(rows, V)`` buffers, one per (name, dtype), sliced to the current chunk."""

    def __init__(self, vocab: int, device: torch.device):
        self.vocab, self.device, self.full = vocab, device, {}

    def get(self, name: str, rows: int, c: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (name, dtype)
        if key not in self.full:
            self.full[key] = torch.empty(rows, self.vocab, dtype=dtype, device=self.device)
        return self.full[key][:c]


def _project(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, low) -> None:
    """out (fp32) = h @ w.T + b, the matmul in w's dtype (through ``low(dtype)`` when that is not fp32)."""
    target = out if w.dtype == torch.float32 else low(w.dtype)
    if b is None:
        torch.mm(h, w.t(), out=target)
    else:
        torch.addmm(b, h, w.t(), out=target)
    if target is not out:
        out.copy_(target)


def _teacher_logits(p: Problem, start: int, end: int, out: torch.Tensor, low) -> None:
    """Write the teacher's raw logits for rows [start, end) into the fp32 ``out``."""
    v = p.vocab
    if p.teacher_logits is None:
        b = None if p.teacher_bias is None else p.teacher_bias[:v]
        _project(out, p.teacher_hidden[start:end], p.teacher_weight[:v], b, low)
        return
    src = p.teacher_logits[:, :v]
    target = out if src.dtype == torch.float32 else low(src.dtype)
    if p.rows is None:
        target.copy_(src[start:end])
    else:
        torch.index_select(src, 0, p.rows[start:end], out=target)
    if target is not out:
        out.copy_(target)


# Values per element-wise block (64 MB of fp32): whole chunks up to 64k-token vocabularies at chunk 256, half a chunk
# at 128k. Smaller, cache-sized blocks (1-4 MB) measured slower on a 2-core machine shared with other jobs: every
# element-wise op is a parallel region whose join waits for a descheduled thread, and small blocks multiply the joins.
BLOCK_ELEMENTS = 1 << 24


def block_rows(vocab: int) -> int:
    return max(1, BLOCK_ELEMENTS // vocab)


@dataclass(frozen=True)
class Plan:
    """What one pass computes and how its gradient is laid out, decided once before the chunk loop.

    The gradient with respect to the logits z replaces the student log-probs in place, block by block:
    ``kd_coef * dL/ds + ce_scale * (softmax(z) - onehot)`` (the one-hot for the whole chunk at the end). Where the
    pieces sit decides the layout, one of:

    - ``fold_rows`` (dense forward KL, fp32 weights, non-negative scales): rows are stored divided by a = kd + ce,
      i.e. q - (kd / a) p_T, and a is folded back into the (C, H) side of the matmuls: one element-wise pass fewer.
    - ``direct_low`` (dense forward KL, bf16/fp16 weights): the last pass writes the low-precision copy directly (after
      the CE one-hot, in fp32, so the gradient is rounded once, as in the dense path).
    - otherwise the general form: the divergence's dL/ds comes from a kernel (in scratch ``s2``) or, for forward KL,
      from p_T (in scratch ``s1``), and is combined with the CE softmax.
    """

    kd_grad: bool  # the gradient includes the divergence
    ce_grad: bool  # the gradient includes the cross-entropy
    dense_teacher: bool  # teacher logits (given or projected) rather than sparse targets
    fold_rows: bool
    direct_low: bool
    kd_coef: float  # d/dz of kd_scale * T^2 * L(z / T) = kd_scale * T^2 / T * dL/ds
    ce_scale: float

    @property
    def any_grad(self) -> bool:
        return self.kd_grad or self.ce_grad


def plan_pass(p: Problem, kd_scale: float, ce_scale: float, need: tuple[bool, bool, bool]) -> Plan:
    wanted = any(need)
    kd_grad = wanted and p.has_kd and kd_scale != 0.0
    ce_grad = wanted and p.has_ce and ce_scale != 0.0
    dense_teacher = p.has_kd and p.sparse is None
    # Forward KL, T = 1 or no CE gradient: the last element-wise pass of the gradient can be saved.
    fast = dense_teacher and p.kind == "forward_kl" and kd_grad and not (ce_grad and p.temperature != 1.0)
    low = p.weight.dtype != torch.float32
    return Plan(
        kd_grad=kd_grad,
        ce_grad=ce_grad,
        dense_teacher=dense_teacher,
        fold_rows=fast and not low and kd_scale > 0 and ce_scale >= 0,
        direct_low=fast and low,
        kd_coef=p.t2 * kd_scale / p.temperature,
        ce_scale=ce_scale,
    )


@dataclass
class Chunk:
    """Per-chunk state shared by its blocks: the logits buffers and the per-row gradient coefficients."""

    ls: torch.Tensor  # (c, V) fp32 student logits -> log-probs -> gradient
    lt: torch.Tensor | None  # (c, V) fp32 teacher logits -> log-probs (dense teacher only)
    kd_col: torch.Tensor | None  # (c, 1) kd_coef on counted rows
    ce_col: torch.Tensor | None  # (c, 1) ce_scale on counted rows
    labels: torch.Tensor | None  # (c, 1)
    kd_rows: torch.Tensor  # (c,) divergence per row
    ce_rows: torch.Tensor  # (c,) cross-entropy per row
    ratio: torch.Tensor | None = None  # fold_rows: -kd / (kd + ce) per row
    inv_a: torch.Tensor | None = None  # fold_rows: 1 / (kd + ce) per row
    a_col: torch.Tensor | None = None  # fold_rows: kd + ce per row
    grad_low: torch.Tensor | None = None  # direct_low: (c, V) gradient in the weight dtype


def _block_losses(p: Problem, plan: Plan, ch: Chunk, b0: int, b1: int, start: int, scratch):
    """Log-softmax the block in place, write its divergence and CE rows, and leave what its gradient needs.

    Returns ``(kd_in_s2, s1, s2, soft, norm)``: whether dL/ds of the divergence is in ``s2`` (else, forward KL, p_T is
    in ``s1``), and for T != 1 the CE softmax numerator ``soft`` and its row sums ``norm``.
    """
    temp = p.temperature
    ls = ch.ls[b0:b1]
    if temp != 1.0:
        ls.div_(temp)
    torch._log_softmax(ls, 1, False, out=ls)
    if p.student_top1 is not None:
        p.student_top1[start + b0 : start + b1] = ls.argmax(1)
    s1 = s2 = None
    kd_in_s2 = False
    if plan.dense_teacher:
        lt = ch.lt[b0:b1]
        if temp != 1.0:
            lt.div_(temp)
        torch._log_softmax(lt, 1, False, out=lt)
        if p.teacher_top1 is not None:
            p.teacher_top1[start + b0 : start + b1] = lt.argmax(1)
        if p.teacher_logits is not None:
            lt.clamp_(min=LOG_FLOOR)  # -inf logits (a masked vocabulary) would give 0 * -inf = NaN
        if p.kind == "forward_kl":
            pt = s1 = torch.exp(lt, out=scratch("s1"))
            ch.kd_rows[b0:b1] = lt.sub_(ls).mul_(pt).sum(1)  # lt is not needed after this
        else:
            s1, s2 = scratch("s1"), scratch("s2")
            ch.kd_rows[b0:b1] = dense_kind_grad(p.kind, p.beta, ls, lt, s1, s2)
            kd_in_s2 = True
    elif p.has_kd:
        sp = p.sparse
        sl = slice(start + b0, start + b1)
        s1, s2 = scratch("s1"), scratch("s2")
        ch.kd_rows[b0:b1] = sparse_kind_grad(
            p.kind, p.beta, ls, sp.ids[sl], sp.logprobs[sl],
            None if sp.tail_logprobs is None else sp.tail_logprobs[sl],
            None if sp.weights is None else sp.weights[sl], s1, s2,
        )  # fmt: skip
        kd_in_s2 = True
    soft = norm = None
    if p.has_ce:
        picked = ls.gather(1, ch.labels[b0:b1]).squeeze(1)
        if temp == 1.0:
            ch.ce_rows[b0:b1] = -picked  # softmax(z) = exp(ls), formed in place by _block_gradient
        else:
            # softmax(z) = softmax(T * ls): the T * lse(z / T) shift cancels, so z is not needed again.
            # The teacher block (or s1 for sparse / no teacher) is free by now.
            soft = torch.mul(ls, temp, out=ch.lt[b0:b1] if plan.dense_teacher else scratch("s1"))
            shift = soft.amax(1, keepdim=True)
            soft.sub_(shift).exp_()
            norm = soft.sum(1, keepdim=True)
            ch.ce_rows[b0:b1] = (shift + norm.log()).squeeze(1) - temp * picked
    return kd_in_s2, s1, s2, soft, norm


def _block_gradient(plan: Plan, ch: Chunk, b0: int, b1: int, kd_in_s2, s1, s2, soft, norm) -> None:
    """Replace the block's log-probs with ``kd * dL/ds + ce * softmax(z)`` (the CE one-hot follows per chunk)."""
    ls = ch.ls[b0:b1]
    kd_b = ch.kd_col[b0:b1] if plan.kd_grad else None
    ce_b = ch.ce_col[b0:b1] if plan.ce_grad else None
    ce_soft = ce_b is not None and soft is not None  # CE's softmax(z) is in `soft` (T != 1)
    ce_q = ce_b is not None and soft is None  # CE's softmax(z) is q = exp(ls) itself (T == 1)
    if plan.fold_rows:
        ls.exp_().addcmul_(s1, ch.ratio[b0:b1])
    elif plan.direct_low:
        q = ls.exp_().mul_(kd_b + ce_b if ce_q else kd_b)
        if ce_q:
            q.scatter_add_(1, ch.labels[b0:b1], ce_b.neg())
        torch.addcmul(q, s1, kd_b.neg(), out=ch.grad_low[b0:b1])
    elif kd_b is not None and not kd_in_s2:  # forward KL: kd (q - p_T), with p_T in s1
        q = ls.exp_()
        q.mul_(kd_b + ce_b if ce_q else kd_b)
        q.addcmul_(s1, kd_b.neg())
    elif kd_b is not None:
        if ce_q:
            ls.exp_().mul_(ce_b).addcmul_(s2, kd_b)
        else:
            torch.mul(s2, kd_b, out=ls)
    elif ce_q:
        ls.exp_().mul_(ce_b)
    else:
        ls.zero_()
    if ce_soft:
        ls.addcmul_(soft, ce_b / norm)


class _Grads:
    """The pass's parameter gradients, accumulated chunk by chunk with matmuls in the weight dtype."""

    def __init__(self, p: Problem, plan: Plan, need: tuple[bool, bool, bool]):
        need_h, need_w, need_b = need
        r, hdim = p.hidden.shape
        dtype, device, v = p.weight.dtype, p.hidden.device, p.vocab
        self.p, self.plan, self.need = p, plan, need
        self.h = torch.empty(r, hdim, dtype=dtype, device=device) if plan.any_grad and need_h else None
        # Not zero-filled: the first chunk with a gradient writes it (one V x H pass fewer); padded rows are zeroed.
        self.w = torch.empty_like(p.weight) if plan.any_grad and need_w else None
        self.w_started = False
        if self.w is not None and v < self.w.shape[0]:
            self.w[v:].zero_()
        wants_b = plan.any_grad and need_b and p.bias is not None
        self.b = torch.zeros(v, dtype=torch.float32, device=device) if wants_b else None

    def add_chunk(self, ch: Chunk, h: torch.Tensor, w: torch.Tensor, start: int, end: int, low) -> None:
        plan, dtype, fold = self.plan, self.p.weight.dtype, self.plan.fold_rows
        grad = ch.grad_low if plan.direct_low else ch.ls
        if plan.ce_grad and not plan.direct_low:
            grad.scatter_add_(1, ch.labels, (ch.ce_col * ch.inv_a if fold else ch.ce_col).neg())
        g = grad if grad.dtype == dtype else low(dtype).copy_(grad)
        if self.h is not None:
            torch.mm(g, w, out=self.h[start:end])
            if fold:
                self.h[start:end].mul_(ch.a_col)
        if self.w is not None:
            hs = h * ch.a_col if fold else h
            if self.w_started:
                self.w[: self.p.vocab].addmm_(g.t(), hs)
            else:
                torch.mm(g.t(), hs, out=self.w[: self.p.vocab])
                self.w_started = True
        if self.b is not None:
            self.b += torch.mv(grad.t(), ch.a_col.squeeze(1)) if fold else grad.sum(0, dtype=torch.float32)

    def result(self):
        p, (need_h, need_w, need_b) = self.p, self.need
        if not self.plan.any_grad and any(self.need):
            # Nothing counted (or both scales 0): the gradient is exactly zero, not missing.
            zeros_b = torch.zeros_like(p.bias) if need_b and p.bias is not None else None
            h = torch.zeros(p.hidden.shape, dtype=p.weight.dtype, device=p.hidden.device) if need_h else None
            return h, torch.zeros_like(p.weight) if need_w else None, zeros_b
        if self.w is not None and not self.w_started:
            self.w.zero_()
        grad_b = None
        if self.b is not None:
            grad_b = torch.zeros_like(p.bias)
            grad_b[: p.vocab] = self.b.to(p.bias.dtype)
        return self.h, self.w, grad_b


def fused_pass(
    p: Problem, kd_scale: float, ce_scale: float, need: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the chunks: loss sums and (where ``need`` says) gradients of ``kd_scale*kd + ce_scale*ce``.

    Returns ``(kd_sum, ce_sum, grad_hidden (R, H) | None, grad_weight (V_full, H) | None, grad_bias | None)``.
    """
    plan = plan_pass(p, kd_scale, ce_scale, need)
    r = p.hidden.shape[0]
    v, device = p.vocab, p.hidden.device
    if p.want_top1:
        p.student_top1 = torch.empty(r, dtype=torch.long, device=device)
        p.teacher_top1 = torch.empty(r, dtype=torch.long, device=device) if plan.dense_teacher else None
    w = p.weight[:v]
    b = None if p.bias is None else p.bias[:v]
    kd_total = torch.zeros((), dtype=torch.float32, device=device)
    ce_total = torch.zeros((), dtype=torch.float32, device=device)
    grads = _Grads(p, plan, need)
    rows_max = min(p.chunk_size, max(r, 1))
    blk = min(block_rows(v), rows_max)
    bufs = _Buffers(v, device)

    for start in range(0, r, p.chunk_size):
        end = min(start + p.chunk_size, r)
        c = end - start
        h = p.hidden[start:end]
        low = functools.partial(bufs.get, "low", rows_max, c)
        ch = Chunk(
            ls=bufs.get("ls", rows_max, c),
            lt=bufs.get("lt", rows_max, c) if plan.dense_teacher else None,
            kd_col=(p.kd_mask[start:end].to(torch.float32) * plan.kd_coef).unsqueeze(1) if p.has_kd else None,
            ce_col=(p.ce_mask[start:end].to(torch.float32) * ce_scale).unsqueeze(1) if p.has_ce else None,
            labels=p.labels[start:end].unsqueeze(1) if p.has_ce else None,
            kd_rows=torch.zeros(c, dtype=torch.float32, device=device),
            ce_rows=torch.zeros(c, dtype=torch.float32, device=device),
        )
        _project(ch.ls, h, w, b, low)
        if plan.dense_teacher:
            _teacher_logits(p, start, end, ch.lt, low)
        if plan.fold_rows:
            ch.a_col = ch.kd_col + ch.ce_col if plan.ce_grad else ch.kd_col
            ch.ratio = torch.where(ch.a_col > 0, ch.kd_col / ch.a_col, 0.0).neg_()
            ch.inv_a = torch.where(ch.a_col > 0, 1.0 / ch.a_col, 0.0)
        if plan.direct_low:
            ch.grad_low = low(p.weight.dtype)

        for b0 in range(0, c, blk):
            b1 = min(b0 + blk, c)
            scratch = functools.partial(bufs.get, rows=blk, c=b1 - b0)  # allocated on first use
            state = _block_losses(p, plan, ch, b0, b1, start, scratch)
            if plan.any_grad:
                _block_gradient(plan, ch, b0, b1, *state)

        kd_total += ch.kd_rows.sum() if p.kd_mask is None else torch.where(p.kd_mask[start:end], ch.kd_rows, 0.0).sum()
        if p.has_ce:
            ce_total += torch.where(p.ce_mask[start:end], ch.ce_rows, 0.0).sum()
        if plan.any_grad:
            grads.add_chunk(ch, h, w, start, end, low)

    return (kd_total * p.t2, ce_total, *grads.result())
