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

from .divergences import LOG_FLOOR
from .fused_kernels import dense_kind_grad, sparse_kind_grad
from .sparse import SparseTargets


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


def fused_pass(
    p: Problem, kd_scale: float, ce_scale: float, need: tuple[bool, bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One pass over the chunks: loss sums and (where ``need`` says) gradients of ``kd_scale*kd + ce_scale*ce``.

    Returns ``(kd_sum, ce_sum, grad_hidden (R, H) | None, grad_weight (V_full, H) | None, grad_bias | None)``.
    """
    need_h, need_w, need_b = need
    kd_grad = (need_h or need_w or need_b) and p.has_kd and kd_scale != 0.0
    ce_grad = (need_h or need_w or need_b) and p.has_ce and ce_scale != 0.0
    any_grad = kd_grad or ce_grad
    r, hdim = p.hidden.shape
    v, temp, dtype, device = p.vocab, p.temperature, p.weight.dtype, p.hidden.device
    w = p.weight[:v]
    b = None if p.bias is None else p.bias[:v]
    dense_teacher = p.has_kd and p.sparse is None

    kd_total = torch.zeros((), dtype=torch.float32, device=device)
    ce_total = torch.zeros((), dtype=torch.float32, device=device)
    grad_h = torch.empty(r, hdim, dtype=dtype, device=device) if any_grad and need_h else None
    # Not zero-filled: the first chunk with a gradient writes it (one V x H pass fewer); padded rows are zeroed.
    grad_w = torch.empty_like(p.weight) if any_grad and need_w else None
    grad_w_started = False
    if grad_w is not None and v < grad_w.shape[0]:
        grad_w[v:].zero_()
    grad_b = torch.zeros(v, dtype=torch.float32, device=device) if any_grad and need_b and b is not None else None
    rows_max = min(p.chunk_size, max(r, 1))
    blk = min(block_rows(v), rows_max)
    bufs = _Buffers(v, device)
    kd_coef = p.t2 * kd_scale / temp  # d/dz of kd_scale * T^2 * L(z / T) = kd_scale * T^2 / T * dL/ds

    for start in range(0, r, p.chunk_size):
        end = min(start + p.chunk_size, r)
        c = end - start
        h = p.hidden[start:end]
        low = functools.partial(bufs.get, "low", rows_max, c)
        ls_all = bufs.get("ls", rows_max, c)
        _project(ls_all, h, w, b, low)
        lt_all = None
        if dense_teacher:
            lt_all = bufs.get("lt", rows_max, c)
            _teacher_logits(p, start, end, lt_all, low)
        kd_rows = torch.zeros(c, dtype=torch.float32, device=device)
        ce_rows = torch.zeros(c, dtype=torch.float32, device=device)
        kd_col = ce_col = labels = None
        if p.has_kd:
            kd_col = (p.kd_mask[start:end].to(torch.float32) * kd_coef).unsqueeze(1)
        if p.has_ce:
            labels = p.labels[start:end].unsqueeze(1)
            ce_col = (p.ce_mask[start:end].to(torch.float32) * ce_scale).unsqueeze(1)

        # Forward KL, T = 1 or no CE gradient: the last element-wise pass of the gradient is saved.
        # - fp32 with non-negative weights: the rows are stored divided by a = kd + ce, i.e. q - (kd / a) p_T, and a
        #   is folded back into the (C, H) side of the matmuls.
        # - bf16/fp16: the last pass writes the low-precision copy directly (after the CE one-hot, in fp32, so the
        #   gradient is rounded once, as in the dense path).
        fast = dense_teacher and p.kind == "forward_kl" and kd_grad and not (ce_grad and temp != 1.0)
        fold_rows = fast and dtype == torch.float32 and kd_scale > 0 and ce_scale >= 0
        direct_low = fast and dtype != torch.float32
        if fold_rows:
            a_col = kd_col + ce_col if ce_grad else kd_col
            ratio = torch.where(a_col > 0, kd_col / a_col, 0.0).neg_()
            inv_a = torch.where(a_col > 0, 1.0 / a_col, 0.0)
        if direct_low:
            grad_low = low(dtype)

        for b0 in range(0, c, blk):
            b1 = min(b0 + blk, c)
            n = b1 - b0
            scratch = functools.partial(bufs.get, rows=blk, c=n)  # allocated on first use: s2 only for some kinds
            ls = ls_all[b0:b1]
            if temp != 1.0:
                ls.div_(temp)
            torch._log_softmax(ls, 1, False, out=ls)
            # d(loss)/ds of the divergence goes to s2 (or, forward KL, is formed in place below from p_T in s1).
            kd_in_s2 = False
            if dense_teacher:
                lt = lt_all[b0:b1]
                if temp != 1.0:
                    lt.div_(temp)
                torch._log_softmax(lt, 1, False, out=lt)
                if p.teacher_logits is not None:
                    lt.clamp_(min=LOG_FLOOR)  # -inf logits (a masked vocabulary) would give 0 * -inf = NaN
                if p.kind == "forward_kl":
                    pt = s1 = torch.exp(lt, out=scratch("s1"))
                    kd_rows[b0:b1] = lt.sub_(ls).mul_(pt).sum(1)  # lt is not needed after this
                else:
                    s2 = scratch("s2")
                    kd_rows[b0:b1] = dense_kind_grad(p.kind, p.beta, ls, lt, scratch("s1"), s2)
                    kd_in_s2 = True
            elif p.has_kd:
                sp = p.sparse
                sl = slice(start + b0, start + b1)
                s2 = scratch("s2")
                kd_rows[b0:b1] = sparse_kind_grad(
                    p.kind, p.beta, ls, sp.ids[sl], sp.logprobs[sl],
                    None if sp.tail_logprobs is None else sp.tail_logprobs[sl],
                    None if sp.weights is None else sp.weights[sl], scratch("s1"), s2,
                )  # fmt: skip
                kd_in_s2 = True
            soft = norm = None
            if p.has_ce:
                picked = ls.gather(1, labels[b0:b1]).squeeze(1)
                if temp == 1.0:
                    ce_rows[b0:b1] = -picked  # softmax(z) = exp(ls), formed in place below
                else:
                    # softmax(z) = softmax(T * ls): the T * lse(z / T) shift cancels, so z is not needed again.
                    # The teacher block (or s1 for sparse / no teacher) is free by now.
                    soft = torch.mul(ls, temp, out=lt if dense_teacher else scratch("s1"))
                    shift = soft.amax(1, keepdim=True)
                    soft.sub_(shift).exp_()
                    norm = soft.sum(1, keepdim=True)
                    ce_rows[b0:b1] = (shift + norm.log()).squeeze(1) - temp * picked
            if not any_grad:
                continue
            # The gradient with respect to z replaces ls in place:
            #   kd * dL/ds + ce * (softmax(z) - onehot)   (onehot added for the whole chunk below)
            kd_b = kd_col[b0:b1] if kd_grad else None
            ce_b = ce_col[b0:b1] if ce_grad else None
            ce_soft = ce_b is not None and soft is not None  # CE's softmax(z) is in `soft` (T != 1)
            ce_q = ce_b is not None and soft is None  # CE's softmax(z) is q = exp(ls) itself (T == 1)
            if fold_rows:
                ls.exp_().addcmul_(s1, ratio[b0:b1])
            elif direct_low:
                q = ls.exp_().mul_(kd_b + ce_b if ce_q else kd_b)
                if ce_q:
                    q.scatter_add_(1, labels[b0:b1], ce_b.neg())
                torch.addcmul(q, s1, kd_b.neg(), out=grad_low[b0:b1])
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

        kd_total += kd_rows.sum() if p.kd_mask is None else torch.where(p.kd_mask[start:end], kd_rows, 0.0).sum()
        if p.has_ce:
            ce_total += torch.where(p.ce_mask[start:end], ce_rows, 0.0).sum()
        if not any_grad:
            continue
        grad = grad_low if direct_low else ls_all
        if ce_grad and not direct_low:
            grad.scatter_add_(1, labels, (ce_col * inv_a if fold_rows else ce_col).neg())
        g = grad if grad.dtype == dtype else low(dtype).copy_(grad)
        if grad_h is not None:
            torch.mm(g, w, out=grad_h[start:end])
            if fold_rows:
                grad_h[start:end].mul_(a_col)
        if grad_w is not None:
            hs = h * a_col if fold_rows else h
            if grad_w_started:
                grad_w[:v].addmm_(g.t(), hs)
            else:
                torch.mm(g.t(), hs, out=grad_w[:v])
                grad_w_started = True
        if grad_b is not None:
            grad_b += torch.mv(grad.t(), a_col.squeeze(1)) if fold_rows else grad.sum(0, dtype=torch.float32)

    kd_total = kd_total * p.t2
    if grad_w is not None and not grad_w_started:
        grad_w.zero_()
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
