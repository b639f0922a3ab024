"""The vocabulary terms: what the teacher hands the loss, and the most the logit loss holds at once.

- Materialised logits (``loss_chunk_size: 0``): the real loss code (``dense_logit_terms`` on the student's
  logits, then backward through the lm_head) is run on fake tensors at the run's shapes and its peak measured
  (``trace.LiveBytes``): logits, softmaxes, masks and their gradients, whatever the divergence.
- Fused chunked loss: closed form from ``losses/fused/loop.py``: two fp32 ``(chunk, V)`` buffers (student
  log-probs, teacher log-probs; one for sparse targets), one ``(chunk, V)`` buffer per 16-bit weight dtype met, one
  or two fp32 scratch blocks of ``min(2^24 / V, chunk)`` rows, the ``V x H`` weight gradient and ``R x H`` hidden
  gradient made in the forward, and the compacted copies of the ``R`` counted rows' inputs.
"""

from __future__ import annotations

import torch

from ..losses import SparseTargets
from ..losses.fused.loop import block_rows
from ..losses.terms import dense_logit_terms
from ..teacher import TeacherOutputs
from .spec import RunSpec
from .trace import LiveBytes, fake_mode

FP32 = 4


def vocab_size(spec: RunSpec) -> int | None:
    """Columns the loss runs over: the shared vocabulary of student and teacher (None for classifiers)."""
    if spec.task == "sequence_classification":
        return None
    sizes = [spec.student.vocab] + [t.shape.vocab for t in spec.teachers]
    return min(v for v in sizes if v)


def counted_rows(spec: RunSpec, batch: int) -> int:
    """Token positions the loss counts in the longest batch (causal LMs: every position but the last)."""
    if spec.task == "sequence_classification":
        return batch
    return batch * (spec.seq - 1 if spec.task == "causal_lm" else spec.seq)


def target_bytes(spec: RunSpec, batch: int) -> int:
    """Cached teacher: ``(B, S, w)`` int64 ids + fp32 log-probs (+ fp32 tail / sampled weights), as read."""
    if spec.store is None:
        return 0
    width = spec.store.width
    lead = batch if spec.task == "sequence_classification" else batch * spec.seq
    extra = width * FP32 if spec.store.mode == "sampled" else FP32
    return lead * (width * (8 + FP32) + extra)


def teacher_logits_bytes(spec: RunSpec, batch: int) -> int:
    """Live teacher's outputs for the logit loss: logits (materialised path) or final hidden states (fused)."""
    if not spec.live_teacher:
        return 0
    total = 0
    for t in spec.teachers:
        b = t.shape.dtype.itemsize
        if spec.task == "sequence_classification":
            total += batch * (t.shape.num_labels or 2) * b
        elif spec.fused:
            total += batch * spec.seq * t.shape.hidden * b
        else:
            total += batch * spec.seq * t.shape.vocab * b
    return total


def naive_loss_peak(spec: RunSpec, batch: int) -> int:
    """Peak bytes of the logit loss on materialised logits, from the lm_head's matmul to the gradients it returns."""
    args = spec.args
    dtype = spec.compute_dtype
    classes = (spec.student.num_labels or 2) if spec.task == "sequence_classification" else spec.student.vocab
    lead = (batch,) if spec.task == "sequence_classification" else (batch, spec.seq)
    width = spec.student.hidden
    head_trainable = not spec.student_lora or spec.task == "sequence_classification"
    shared = vocab_size(spec)
    with fake_mode():
        hidden = torch.zeros(*lead, width, dtype=dtype, requires_grad=True)
        weight = torch.zeros(classes, width, dtype=dtype, requires_grad=head_trainable)
        mask = torch.ones(lead, dtype=torch.bool)
        labels = torch.zeros(lead, dtype=torch.long)
        if spec.store is not None:
            w = spec.store.width
            teacher = TeacherOutputs(
                sparse=SparseTargets(
                    torch.zeros(*lead, w, dtype=torch.long),
                    torch.zeros(*lead, w),
                    tail_logprobs=None if spec.store.mode == "sampled" else torch.zeros(lead),
                    weights=torch.ones(*lead, w) if spec.store.mode == "sampled" else None,
                )
            )
        else:
            t = spec.teachers[0].shape if spec.teachers else spec.student
            t_classes = (t.num_labels or 2) if spec.task == "sequence_classification" else t.vocab
            teacher = TeacherOutputs(logits=torch.zeros(*lead, t_classes, dtype=t.dtype))
        kd = dict(kind=args.kd_loss, temperature=args.temperature, beta=args.jsd_beta, scale_by_t2=args.scale_by_t2)
        with LiveBytes() as live:
            logits = torch.nn.functional.linear(hidden, weight)
            if spec.autocast:
                logits = logits.float()  # accelerate returns the autocast student's outputs in fp32
            kd_sum, ce_sum, _ = dense_logit_terms(
                logits,
                teacher_logits=teacher.logits,
                sparse=teacher.sparse,
                mask=mask,
                labels=labels,
                kd=kd,
                vocab_size=shared if shared != classes else None,
                want_ce=args.ce_weight > 0,
            )
            del logits  # the trainer drops the student's outputs before backward
            loss = args.kd_weight * kd_sum + args.ce_weight * ce_sum
            if loss.requires_grad:
                loss.backward()
            del loss, kd_sum, ce_sum
    return live.peak


def fused_loss_peak(spec: RunSpec, batch: int) -> int:
    """Peak bytes of ``fused_distillation_loss`` (closed form, see the module docstring)."""
    rows = counted_rows(spec, batch)
    v = vocab_size(spec)
    chunk = min(spec.chunk, max(rows, 1))
    blk = min(block_rows(v), chunk)
    h = spec.student.hidden
    w_dtype = spec.student.dtype  # the fused loop runs its matmuls in the lm_head weight's dtype
    dense_teacher = spec.store is None and spec.live_teacher
    total = chunk * v * FP32  # student log-probs, turned into the gradient in place
    low = {w_dtype} if w_dtype != torch.float32 else set()
    if dense_teacher:
        total += chunk * v * FP32  # teacher log-probs
        for t in spec.teachers:
            if t.shape.dtype != torch.float32:
                low.add(t.shape.dtype)
        total += rows * spec.teachers[0].shape.hidden * spec.teachers[0].shape.dtype.itemsize  # compacted rows
    total += sum(chunk * v * d.itemsize for d in low)
    scratch = 1 if (dense_teacher and spec.args.kd_loss == "forward_kl") else 2
    total += scratch * blk * v * FP32
    total += rows * h * w_dtype.itemsize  # compacted student hidden states
    total += rows * h * w_dtype.itemsize  # hidden-state gradient, made in the forward
    if not spec.student_lora:
        total += spec.student.head_params * w_dtype.itemsize  # lm_head gradient, made in the forward
    if spec.store is not None:
        width = spec.store.width
        total += 2 * rows * (width * (8 + FP32) + FP32)  # counted rows' targets, compacted then clamped
    return total


def loss_peak(spec: RunSpec, batch: int) -> int:
    return fused_loss_peak(spec, batch) if spec.fused else naive_loss_peak(spec, batch)
