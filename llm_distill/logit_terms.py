"""The KD and CE sums of one batch, from materialised logits or from the fused chunked lm_head.

Both paths return the same numbers (tested): sums over counted positions, the teacher's top-1 agreement count when
it is cheap to know, and nothing that depends on the trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import divergence, fused_distillation_loss, hard_ce, sparse_divergence
from .teacher import TeacherOutputs


def _sliced(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    return logits if vocab_size is None else logits[..., :vocab_size]


def dense_logit_terms(student_logits, teacher: TeacherOutputs, mask, labels, *, kd: dict, vocab_size, want_ce: bool):
    """(kd_sum, ce_sum, agreement count) from the student's full logits ``(..., V)``."""
    student_logits = _sliced(student_logits, vocab_size)
    if teacher.sparse is not None:
        kd_sum = sparse_divergence(student_logits, teacher.sparse, mask=mask, reduction="sum", **kd)
        best = teacher.sparse.logprobs.argmax(-1, keepdim=True)
        teacher_top1 = teacher.sparse.ids.gather(-1, best).squeeze(-1)
    else:
        teacher_logits = _sliced(teacher.logits, vocab_size)
        kd_sum = divergence(student_logits, teacher_logits, mask=mask, reduction="sum", **kd)
        teacher_top1 = teacher_logits.argmax(-1)
    ce_sum = hard_ce(student_logits, labels, reduction="sum") if want_ce else kd_sum.new_zeros(())
    with torch.no_grad():
        agree = ((student_logits.argmax(-1) == teacher_top1) & mask).sum()
    return kd_sum, ce_sum, agree


def check_fusable(student: nn.Module) -> None:
    """The fused path applies the lm_head weight itself: it must be a plain linear layer."""
    head = student.get_output_embeddings() if hasattr(student, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        raise ValueError(
            f"loss_chunk_size > 0 needs the student's lm_head to be a plain nn.Linear, got {type(head).__name__}; "
            "LoRA or modules_to_save on lm_head is not supported by the fused loss: set loss_chunk_size=0"
        )


def fused_logit_terms(
    student: nn.Module,
    final_hidden,
    teacher: TeacherOutputs,
    mask,
    labels,
    *,
    kd: dict,
    weights: tuple[float, float],
    vocab_size,
    chunk_size: int,
):
    """(kd_sum, ce_sum, None) from the student's final normed hidden states ``(B, S, H)``, chunk by chunk.

    Only counted positions are projected; the agreement needs the full argmax and is not computed here.
    """
    head = student.get_output_embeddings()
    rows = mask.reshape(-1)
    take = lambda t: t.reshape(-1, *t.shape[mask.dim() :])[rows]  # noqa: E731  (B, S, ...) -> (n, ...)
    source = {}
    if teacher.sparse is not None:
        source["sparse_targets"] = teacher.sparse.map(take)
    elif teacher.final_hidden is not None:
        source.update(
            teacher_hidden=take(teacher.final_hidden),
            teacher_weight=teacher.lm_head_weight,
            teacher_bias=teacher.lm_head_bias,
        )
    else:
        source["teacher_logits"] = take(teacher.logits)
    kd_sum, ce_sum = fused_distillation_loss(
        take(final_hidden),
        head.weight,
        head.bias,
        labels=take(labels),
        kd_weight=weights[0],
        ce_weight=weights[1],
        chunk_size=chunk_size or None,
        vocab_size=vocab_size,
        **kd,
        **source,
    )
    return kd_sum, ce_sum, None
