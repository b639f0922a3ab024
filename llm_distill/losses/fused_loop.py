"""The chunk loop behind ``fused_distillation_loss``: buffers, matmuls and the combination of KD and CE gradients.

Buffers: at most four fp32 ``(chunk, V)`` buffers, allocated once per call and reused for every chunk (a fresh
vocabulary-sized allocation per chunk costs page faults on CPU and allocator churn on GPU). Forward KL against a
dense teacher, sparse targets and CE alone need three (two for CE alone); the other kinds need four. bf16/fp16
matmul outputs and the low-precision copy of the gradient live inside whichever fp32 buffer is free at that moment
(viewed as the low dtype), so low precision costs no extra buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .divergences import LOG_FLOOR
from .fused_kernels import dense_kind_grad, rowdot, sparse_kind_grad
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
    """Lazily allocated fp32 (chunk, V) buffers; ``low(name, c, dtype)`` views one's storage in another dtype."""

    def __init__(self, rows: int, vocab: int, device: torch.device):
        self.rows, self.vocab, self.device, self.full = rows, vocab, device, {}

    def get(self, name: str, c: int) -> torch.Tensor:
        if name not in self.full:
            self.full[name] = torch.empty(self.rows, self.vocab, dtype=torch.float32, device=self.device)
        return self.full[name][:c]

    def low(self, name: str, c: int, dtype: torch.dtype) -> torch.Tensor:
        self.get(name, c)
        flat = self.full[name].view(-1).view(dtype)  # 2-byte dtypes: twice the elements of the fp32 storage
        return flat[: c * self.vocab].view(c, self.vocab)


def _project(out: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bufs, spare: str) -> None:
    """out (fp32) = h @ w.T + b, the matmul in w's dtype (inside the free buffer ``spare`` when not fp32)."""
    target = out if w.dtype == torch.float32 else bufs.low(spare, out.shape[0], w.dtype)
    if b is None:
        torch.mm(h, w.t(), out=target)
    else:
        torch.addmm(b, h, w.t(), out=target)
    if target is not out:
        out.copy_(target)


def _teacher_logits(p: Problem, start: int, end: int, out: torch.Tensor, bufs: _Buffers, spare: str) -> None:
    """Write the teacher's raw logits for rows [start, end) into the fp32 ``out``."""
    v = p.vocab
    if p.teacher_logits is None:
        b = None if p.teacher_bias is None else p.teacher_bias[:v]
        _project(out, p.teacher_hidden[start:end], p.teacher_weight[:v], b, bufs, spare)
        return
    src = p.teacher_logits[:, :v]
    target = out if src.dtype == torch.float32 else bufs.low(spare, end - start, src.dtype)
    if p.rows is None:
        target.copy_(src[start:end])
    else:
        torch.index_select(src, 0, p.rows[start:end], out=target)
    if target is not out:
        out.copy_(target)


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
    fast_fkl = dense_teacher and p.kind == "forward_kl"

    kd_total = torch.zeros((), dtype=torch.float32, device=device)
    ce_total = torch.zeros((), dtype=torch.float32, device=device)
    grad_h = torch.empty(r, hdim, dtype=dtype, device=device) if any_grad and need_h else None
    # Not zero-filled: the first chunk with a gradient writes it (one V x H pass fewer); padded rows are zeroed.
    grad_w = torch.empty_like(p.weight) if any_grad and need_w else None
    grad_w_started = False
    if grad_w is not None and v < grad_w.shape[0]:
        grad_w[v:].zero_()
    grad_b = torch.zeros(v, dtype=torch.float32, device=device) if any_grad and need_b and b is not None else None
    bufs = _Buffers(min(p.chunk_size, max(r, 1)), v, device)
    kd_coef = p.t2 * kd_scale / temp  # d/dz of kd_scale * T^2 * L(z / T) = kd_scale * T^2 / T * dL/ds

    for start in range(0, r, p.chunk_size):
        end = min(start + p.chunk_size, r)
        c = end - start
        h = p.hidden[start:end]
        ls = bufs.get("ls", c)
        _project(ls, h, w, b, bufs, spare="b")
        if temp != 1.0:
            ls.div_(temp)
        torch._log_softmax(ls, 1, False, out=ls)
        grad = None  # the buffer that ends up holding d(loss)/dz for this chunk

        if p.has_kd:
            kd_mask = p.kd_mask[start:end]
            kd_col = (kd_mask.to(torch.float32) * kd_coef).unsqueeze(1)
            if dense_teacher:
                lt = bufs.get("b", c)
                _teacher_logits(p, start, end, lt, bufs, spare="out")
                if temp != 1.0:
                    lt.div_(temp)
                torch._log_softmax(lt, 1, False, out=lt)
                if p.teacher_logits is not None:
                    lt.clamp_(min=LOG_FLOOR)  # -inf logits (a masked vocabulary) would give 0 * -inf = NaN
            if fast_fkl:
                # Forward KL in three buffers: p_T goes to "out"; dL/ds = q - p_T is formed below, together with CE.
                pt = torch.exp(lt, out=bufs.get("out", c))
                rows = rowdot(pt, lt) - rowdot(pt, ls)
            elif dense_teacher:
                rows = dense_kind_grad(p.kind, p.beta, ls, lt, bufs.get("s", c), bufs.get("out", c))
            else:
                sp = p.sparse
                tail = None if sp.tail_logprobs is None else sp.tail_logprobs[start:end]
                weights = None if sp.weights is None else sp.weights[start:end]
                rows = sparse_kind_grad(
                    p.kind, p.beta, ls, sp.ids[start:end], sp.logprobs[start:end], tail, weights,
                    bufs.get("b", c), bufs.get("out", c),
                )  # fmt: skip
            kd_total += torch.where(kd_mask, rows, torch.zeros_like(rows)).sum() * p.t2
            if kd_grad and not fast_fkl:
                grad = bufs.get("out", c).mul_(kd_col)

        soft = norm = None
        if p.has_ce:
            labels, ce_mask = p.labels[start:end].unsqueeze(1), p.ce_mask[start:end]
            picked = ls.gather(1, labels).squeeze(1)
            if temp == 1.0:
                rows = -picked  # softmax(z) = exp(ls): formed in place below
            else:
                # softmax(z) = softmax(T * ls): the T * lse(z / T) shift cancels, so z itself is not needed again.
                # "b" is free here: the teacher log-probs (or the sparse scratch) have been used up.
                soft = torch.mul(ls, temp, out=bufs.get("b", c))
                shift = soft.amax(1, keepdim=True)
                soft.sub_(shift).exp_()
                norm = soft.sum(1, keepdim=True)
                rows = (shift + norm.log()).squeeze(1) - temp * picked
            ce_total += torch.where(ce_mask, rows, torch.zeros_like(rows)).sum()

        if fast_fkl and kd_grad:
            q = ls.exp_()  # ls is no longer needed: the gradient is built in its buffer
            pt = bufs.get("out", c)
            if ce_grad and soft is None:
                ce_col = (ce_mask.to(torch.float32) * ce_scale).unsqueeze(1)
                q.mul_(kd_col + ce_col)  # (kd + ce) q - kd p_T - ce onehot
            else:
                q.mul_(kd_col)
            q.addcmul_(pt, kd_col.neg())
            grad = q
        if ce_grad:
            ce_col = (ce_mask.to(torch.float32) * ce_scale).unsqueeze(1)
            if soft is not None:
                if grad is None:
                    grad = soft.mul_(ce_col / norm)
                else:
                    grad.addcmul_(soft, ce_col / norm)
            elif grad is None:
                grad = ls.exp_().mul_(ce_col)
            elif not fast_fkl:
                grad.addcmul_(torch.exp(ls, out=bufs.get("b", c)), ce_col)
            grad.scatter_add_(1, labels, ce_col.neg())
        if grad is None:
            continue

        if dtype == torch.float32:
            g = grad
        else:
            # Any buffer other than the gradient's own is free by now.
            spare = next(n for n, t in bufs.full.items() if t.data_ptr() != grad.data_ptr())
            g = bufs.low(spare, c, dtype).copy_(grad)
        if grad_h is not None:
            torch.mm(g, w, out=grad_h[start:end])
        if grad_w is not None:
            if grad_w_started:
                grad_w[:v].addmm_(g.t(), h)
            else:
                torch.mm(g.t(), h, out=grad_w[:v])
                grad_w_started = True
        if grad_b is not None:
            grad_b += grad.sum(0)

    if grad_w is not None and not grad_w_started:
        grad_w.zero_()  # no chunk had a gradient (every row masked for the terms being differentiated)
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
