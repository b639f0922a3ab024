"""Relation losses: self-attention relations (MiniLMv2), pre-softmax attention scores (TinyBERT) and relational
knowledge between the samples of a batch (RKD), as pure tensor functions.

Every function returns ``(loss_sum, count)`` like ``features.py``: nothing is averaged over the counted items, so a
trainer adds sums and counts over an accumulation window (and across processes) and divides once.

- **Self-attention relations** (Wang et al., "MiniLMv2", Findings of ACL 2021). For one mapped layer and one kind of
  projection (queries, keys or values), the concatenation of a layer's heads ``A`` ``(B, S, d)`` is split into ``R``
  relation heads ``A_r`` ``(B, S, d / R)`` of contiguous columns, and ``softmax(A_r A_r^T / sqrt(d / R))`` is the
  distribution of each query token over the keys. The loss per real query row is ``KL(teacher || student)`` averaged
  over the R relation heads. Teacher and student need the same R, not the same width or number of attention heads,
  and no projection is involved.

  Invariance, exactly: ``A_r A_r^T`` is unchanged by any permutation ``P`` of the columns of ``A_r``
  (``A_r P P^T A_r^T = A_r A_r^T``), so reordering the attention heads *inside* one relation head (or any columns
  inside it) leaves the loss unchanged. Moving columns *between* relation heads changes which dot products are summed
  together, and the relation in general.
- **Pre-softmax attention scores** (Jiao et al., "TinyBERT", 2020, eq. 3 uses the unnormalised ``QK^T / sqrt(d)``):
  MSE (mean over the allowed keys of a query row of the squared difference, averaged over heads: scores are not
  bounded like probabilities, so a sum over keys would grow with the length) or KL between the softmaxes over the
  allowed keys. A position counts only where the model itself lets the query attend to the key
  (``allowed``: its own attention mask, causal or padded) and both are real tokens.
- **RKD** (Park et al., "Relational Knowledge Distillation", CVPR 2019): on one pooled vector per sample,
  distance-wise ``huber(d_S(i, j) / mu_S - d_T(i, j) / mu_T)`` over ordered pairs i != j (``mu`` = the mean distance
  over those pairs) and angle-wise ``huber(cos_S(i, j, k) - cos_T(i, j, k))`` over ordered triplets of distinct
  samples, with ``cos(i, j, k) = <e_ji, e_jk>`` and ``e_ji`` the unit vector from sample j to sample i. Huber with
  delta 1 (``smooth_l1``) as in the paper. Counts: ``n (n - 1)`` pairs and ``n (n - 1) (n - 2)`` triplets of the ``n``
  samples given; the relation is between the samples passed in one call (a trainer passes one micro-batch).

All arithmetic is fp32 whatever the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .features import _match_heads, _token_mask

RELATION_KINDS = ("query", "key", "value")
SCORE_LOSS_KINDS = ("mse", "kl")
POOLINGS = ("cls", "mean")
# Squared distances and norms are clamped to this before the square root: identical samples (distance 0) then have a
# finite gradient (0) instead of NaN.
SQ_FLOOR = 1.0e-12


def _filled(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    # The dtype's lowest finite value rather than -inf: a row with no allowed key (a padded query) stays finite, and
    # its softmax uniform; such rows are never counted.
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row, both restricted to the ``allowed`` entries."""
    lt = _filled(teacher_logits, allowed).log_softmax(-1)
    ls = _filled(student_logits, allowed).log_softmax(-1)
    return torch.where(allowed, lt.exp() * (lt - ls), torch.zeros_like(lt)).sum(-1)


def _relation_logits(x: torch.Tensor, heads: int, role: str) -> torch.Tensor:
    b, s, d = x.shape
    if d % heads:
        raise ValueError(
            f"relation_heads={heads} does not divide the {role}'s width {d}; use a number of relation heads that "
            "divides both the student's and the teacher's query/key/value widths"
        )
    a = x.float().view(b, s, heads, d // heads).transpose(1, 2)  # (B, R, S, d_r)
    return a @ a.transpose(-1, -2) / math.sqrt(d // heads)


def attention_relation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    heads: int,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLMv2 relation loss of one projection kind (Q-Q, K-K or V-V) for one mapped layer pair.

    Args:
        student: ``(B, S, d_S)`` the student layer's concatenated projection outputs (all heads); carries the gradient.
        teacher: ``(B, S, d_T)`` the teacher's; treated as a constant. d_S and d_T may differ.
        attention_mask: ``(B, S)`` 1 for real tokens; padded queries are not counted, padded keys are left out of
            every distribution. None: every position is real.
        heads: R, the number of relation heads; must divide d_S and d_T.
        causal: keys after the query are left out too (what a causal model's attention can see).
    Returns:
        ``(loss_sum, count)``: fp32 sum over real query rows of the relation-head-averaged KL, and the int64 number
        of real query rows.
    """
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"relation_heads={heads!r} is not accepted; it must be an int >= 1")
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"relation inputs must be (batch, seq, width) with the same batch and seq; got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    b, s, _ = student.shape
    mask = _token_mask(attention_mask, b, s, student.device)
    allowed = mask[:, None, None, :]  # (B, 1, 1, S) over relation heads and queries
    if causal:
        allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=student.device).tril()
    per_row = _kl_rows(
        _relation_logits(teacher.detach(), heads, "teacher"), _relation_logits(student, heads, "student"), allowed
    )
    per_query = per_row.mean(1)  # (B, S): average over relation heads
    return torch.where(mask, per_query, torch.zeros_like(per_query)).sum(), mask.sum()


def attention_score_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    allowed: torch.Tensor | None = None,
    kind: str = "mse",
    heads: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss between pre-softmax attention scores of one mapped layer pair, over the positions the models attend.

    Args:
        student: ``(B, H_S, S, S)`` scores ``QK^T * scaling`` before the mask and softmax; carries the gradient.
        teacher: ``(B, H_T, S, S)``; treated as a constant.
        attention_mask: ``(B, S)`` 1 for real tokens (queries and keys). None: every position is real.
        allowed: bool, broadcastable to ``(B, H, S, S)``: True where the models' own attention mask lets the query
            see the key (causal, padding, sliding window). None: every pair of real tokens.
        kind: ``"mse"``: mean over the allowed keys of ``(s_S - s_T)^2`` per query row (TinyBERT's element-wise MSE,
            with padded and masked entries left out instead of zeroed); ``"kl"``: KL between the softmaxes over the
            allowed keys.
        heads: ``"per_head"`` | ``"mean"`` | ``"auto"`` as in ``features.attention_loss`` (``mean`` averages the
            scores over heads).
    Returns:
        ``(loss_sum, count)``: fp32 sum over real query rows of the head-averaged per-row loss; int64 real rows.
    """
    if kind not in SCORE_LOSS_KINDS:
        raise ValueError(f"score loss kind={kind!r} is not known; expected one of {', '.join(SCORE_LOSS_KINDS)}")
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"attention scores must be (batch, heads, seq, seq); got student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)}"
        )
    b, _, sq, sk = student.shape
    if (teacher.shape[0], teacher.shape[2], teacher.shape[3]) != (b, sq, sk) or sq != sk:
        raise ValueError(
            f"student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} must share batch and "
            "(seq, seq) dims"
        )
    s, t = _match_heads(student.float(), teacher.detach().float(), heads)
    mask = _token_mask(attention_mask, b, sq, student.device)
    keys = mask[:, None, None, :]
    if allowed is not None:
        keys = keys & allowed.to(student.device).bool()
    keys = keys.expand(b, s.shape[1], sq, sk)
    if kind == "mse":
        squared = torch.where(keys, (s - t).pow(2), torch.zeros_like(s)).sum(-1)
        per_row = squared / keys.sum(-1).clamp_min(1)
    else:
        per_row = _kl_rows(t, s, keys)
    per_query = per_row.mean(1)
    return torch.where(mask, per_query, torch.zeros_like(per_query)).sum(), mask.sum()


def pool_hidden(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *, how: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One vector per sample from ``(B, S, H)`` hidden states.

    ``"cls"``: the first real token (``[CLS]`` for BERT-style classifiers, also with left padding); ``"mean"``: the
    mean over real tokens. Returns ``(pooled (B, H) fp32, rows (B,) bool)``; ``rows`` is False for a sample with no
    real token (its vector is 0 and it must not take part in a relation).
    """
    if how not in POOLINGS:
        raise ValueError(f"rkd_pooling={how!r} is not known; expected one of {', '.join(POOLINGS)}")
    b, s, _ = hidden.shape
    mask = _token_mask(attention_mask, b, s, hidden.device)
    rows = mask.any(-1)
    h = hidden.float()
    if how == "cls":
        first = mask.int().argmax(-1)  # the first real position (0 for an empty row)
        return h[torch.arange(b, device=h.device), first] * rows[:, None], rows
    weights = mask.float()
    return (h * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0), rows


def _distances(x: torch.Tensor) -> torch.Tensor:
    diff = x[:, None, :] - x[None, :, :]
    return diff.pow(2).sum(-1).clamp_min(SQ_FLOOR).sqrt()


def _unit_differences(x: torch.Tensor) -> torch.Tensor:
    """``e[j, i] = (x_i - x_j) / |x_i - x_j|``, shape ``(n, n, D)`` (0 where i == j)."""
    diff = x[None, :, :] - x[:, None, :]
    return diff / diff.pow(2).sum(-1, keepdim=True).clamp_min(SQ_FLOOR).sqrt()


def _rows(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None):
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"RKD inputs must be (samples, dim) with the same number of samples; got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    if rows is None:
        return student.float(), teacher.detach().float()
    rows = rows.to(student.device).bool()
    return student.float()[rows], teacher.detach().float()[rows]


def _zero(student: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Attached to the graph so that a caller's backward (and DDP's bookkeeping) sees the same parameters every step.
    return student.float().sum() * 0.0, torch.zeros((), dtype=torch.long, device=student.device)


def rkd_distance_loss(
    student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RKD distance-wise loss between the samples of one batch.

    Args:
        student: ``(B, D_S)`` pooled student vectors; teacher: ``(B, D_T)`` (any width, no projection).
        rows: ``(B,)`` bool, the samples that take part (None: all).
    Returns:
        ``(loss_sum, count)``: fp32 sum of the Huber loss over ordered pairs i != j of the n taking part, and
        ``n (n - 1)``. Fewer than 2 samples: ``(0, 0)``.
    """
    s, t = _rows(student, teacher, rows)
    n = s.shape[0]
    if n < 2:
        return _zero(student)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    ds, dt = _distances(s), _distances(t)
    ds = ds / ds[off].mean().clamp_min(SQ_FLOOR)
    dt = dt / dt[off].mean().clamp_min(SQ_FLOOR)
    per_pair = F.smooth_l1_loss(ds, dt, reduction="none", beta=1.0)
    return per_pair[off].sum(), torch.tensor(n * (n - 1), device=s.device)


def rkd_angle_loss(
    student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RKD angle-wise loss between the samples of one batch (see ``rkd_distance_loss`` for the arguments).

    Returns ``(loss_sum, count)``: the Huber loss summed over ordered triplets of distinct samples and
    ``n (n - 1) (n - 2)``. Fewer than 3 samples: ``(0, 0)``. Memory: ``n^2 x D`` per model.
    """
    s, t = _rows(student, teacher, rows)
    n = s.shape[0]
    if n < 3:
        return _zero(student)
    es, et = _unit_differences(s), _unit_differences(t)
    cos_s, cos_t = es @ es.transpose(1, 2), et @ et.transpose(1, 2)  # [j, i, k] = <e_ji, e_jk>
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    distinct = ~(eye[:, :, None] | eye[:, None, :] | eye[None, :, :])  # j != i, j != k, i != k
    per_triplet = F.smooth_l1_loss(cos_s, cos_t, reduction="none", beta=1.0)
    return per_triplet[distinct].sum(), torch.tensor(n * (n - 1) * (n - 2), device=s.device)
