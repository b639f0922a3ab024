"""The KD and CE sums of one batch, from materialised logits or from the fused chunked lm_head.

Both paths return the same numbers (tested): sums over counted positions and the teacher-student top-1 agreement
count. The teacher's targets come in one of three forms — dense ``teacher_logits``, ``sparse`` top-k / sampled
targets, or (fused path only) the teacher's final hidden states and lm_head — exactly one of which is given.
"""

from __future__ import annotations

import torch

from .cross_vocab import exact_map_divergence, hybrid_loss, uld_loss
from .divergences import divergence, hard_ce
from .fused import fused_distillation_loss
from .sparse import SparseTargets, sparse_divergence


def _sliced(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    return logits if vocab_size is None else logits[..., :vocab_size]


def teacher_top1(
    *, teacher_logits: torch.Tensor | None = None, sparse: SparseTargets | None = None, vocab_size=None
) -> torch.Tensor:
    """The teacher's most likely id per position, ``(...)``, from dense logits ``(..., V)`` or sparse targets."""
    if sparse is not None:
        best = sparse.logprobs.argmax(-1, keepdim=True)
        return sparse.ids.gather(-1, best).squeeze(-1)
    return _sliced(teacher_logits, vocab_size).argmax(-1)


def dense_logit_terms(
    student_logits: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    sparse: SparseTargets | None = None,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    kd: dict,
    vocab_size: int | None,
    want_ce: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kd_sum, ce_sum, agreement count)`` from the student's full logits.

    Args:
        student_logits: ``(..., V)``; teacher_logits: ``(..., V_T)``; or sparse: targets with leading dims ``(...)``.
        mask: ``(...)`` bool, the counted positions; labels: ``(...)`` int64 (-100 where not counted) or None.
        kd: keyword arguments of the divergence (kind, temperature, beta, scale_by_t2).
        vocab_size: the shared leading columns of both vocabularies (padded embedding tails cut), or None.
    """
    student_logits = _sliced(student_logits, vocab_size)
    if sparse is not None:
        kd_sum = sparse_divergence(student_logits, sparse, mask=mask, reduction="sum", **kd)
    else:
        kd_sum = divergence(student_logits, _sliced(teacher_logits, vocab_size), mask=mask, reduction="sum", **kd)
    ce_sum = hard_ce(student_logits, labels, reduction="sum") if want_ce else kd_sum.new_zeros(())
    with torch.no_grad():
        top1 = teacher_top1(teacher_logits=teacher_logits, sparse=sparse, vocab_size=vocab_size)
        agree = ((student_logits.argmax(-1) == top1) & mask).sum()
    return kd_sum, ce_sum, agree


def fused_logit_terms(
    final_hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    sparse: SparseTargets | None = None,
    mask: torch.Tensor,
    labels: torch.Tensor | None,
    kd: dict,
    weights: tuple[float, float],
    vocab_size: int | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(kd_sum, ce_sum, agreement count)`` from the student's final normed hidden states ``(B, S, H)``, chunk by
    chunk.

    Only counted positions (``mask``, ``(B, S)``) are projected. Teacher tensors have leading dims ``(B, S)``;
    ``teacher_weight`` is ``(V_T, H_T)``. ``weights`` = (kd_weight, ce_weight) the caller applies to the sums.
    """
    rows = mask.reshape(-1)

    def take(t: torch.Tensor) -> torch.Tensor:  # (B, S, ...) -> (n, ...)
        return t.reshape(-1, *t.shape[mask.dim() :])[rows]

    source: dict = {}
    if sparse is not None:
        source["sparse_targets"] = sparse.map(take)
    elif teacher_hidden is not None:
        source.update(teacher_hidden=take(teacher_hidden), teacher_weight=teacher_weight, teacher_bias=teacher_bias)
    else:
        source["teacher_logits"] = take(teacher_logits)
    kd_sum, ce_sum, student_top1, top1 = fused_distillation_loss(
        take(final_hidden),
        head_weight,
        head_bias,
        labels=None if labels is None else take(labels),
        kd_weight=weights[0],
        ce_weight=weights[1],
        chunk_size=chunk_size or None,
        vocab_size=vocab_size,
        return_top1=True,
        **kd,
        **source,
    )
    with torch.no_grad():
        if sparse is not None:
            top1 = teacher_top1(sparse=source["sparse_targets"])
        agree = (student_top1 == top1).sum()
    return kd_sum, ce_sum, agree


def cross_vocab_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    pair_mask: torch.Tensor,
    loss: str,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    student_to_teacher: torch.Tensor,
    kd: dict,
    exact_weight: float = 1.0,
    uld_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kd_sum, agreement count)`` over the aligned positions of a student and a teacher with two vocabularies.

    Args:
        student_logits: ``(B, P, V_S)`` at the aligned positions; teacher_logits: ``(B, P, V_T)`` at the same pairs.
        pair_mask: ``(B, P)`` bool, the pairs that count.
        loss: ``uld`` | ``exact`` | ``hybrid`` (``cross_vocab``); ULD compares sorted distributions and ignores
            ``kd``'s kind and beta.
        student_ids, teacher_ids: ``(K,)`` the exact map's pairs; student_to_teacher: ``(V_S,)`` int64, the teacher
            id of each student id or -1 (for the agreement: the student's top-1 maps to the teacher's top-1).
        kd: the divergence's kind, temperature, beta and scale_by_t2.
    """
    common = {
        "temperature": kd["temperature"],
        "mask": pair_mask,
        "reduction": "sum",
        "scale_by_t2": kd["scale_by_t2"],
    }
    if loss == "uld":
        kd_sum = uld_loss(student_logits, teacher_logits, **common)
    elif loss == "exact":
        kd_sum = exact_map_divergence(
            student_logits, teacher_logits, student_ids, teacher_ids, kind=kd["kind"], beta=kd["beta"], **common
        )
    elif loss == "hybrid":
        kd_sum = hybrid_loss(
            student_logits, teacher_logits, student_ids, teacher_ids, exact_weight=exact_weight,
            uld_weight=uld_weight, kind=kd["kind"], beta=kd["beta"], **common,
        )  # fmt: skip
    else:
        raise ValueError(f"loss={loss!r} is not accepted; expected uld, exact or hybrid")
    with torch.no_grad():
        mapped = student_to_teacher.to(student_logits.device)[student_logits.argmax(-1)]
        agree = ((mapped == teacher_logits.argmax(-1).to(mapped.device)) & pair_mask).sum()
    return kd_sum, agree
