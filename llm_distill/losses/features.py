"""Feature losses: hidden states and attention maps, as pure tensor functions.

Every function returns ``(loss_sum, count)``: the loss summed over the counted items and how many items were
counted, both 0-dim tensors. Nothing is averaged inside, so a trainer can add sums and counts over the micro-batches
of a gradient-accumulation window (and across processes) and divide once; batch 8 x accum 1 and batch 4 x accum 2
then give the same gradient.

The counted items are *real tokens*: positions where ``attention_mask`` is 1 (padding never counts, whether left
or right). Unlike the logit losses, no label shift applies: a hidden state or an attention row at position t belongs
to token t itself.

- hidden states: one item = one real token of one mapped layer; its value is the mean over the hidden dim of the
  squared error (TinyBERT's ``MSELoss`` per token), or ``1 - cos`` (DistilBERT's cosine loss).
- attention: one item = one real query row of one mapped layer; its value is averaged over heads, and is
  ``KL(p_T || p_S)`` over the real keys (MiniLM) or the squared L2 distance ``sum_k (p_S - p_T)^2`` over the real
  keys (TinyBERT's MSE, on probabilities: Hugging Face models return post-softmax maps, whereas TinyBERT used the
  pre-softmax scores; the 1/S factor of an element-wise mean is left out so the scale does not depend on length).

All arithmetic is fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HIDDEN_LOSS_KINDS = ("mse", "cosine")
ATTENTION_LOSS_KINDS = ("kl", "mse")
HEAD_MODES = ("auto", "per_head", "mean")

# Probabilities are clamped to this before the log. A student entry that is exactly 0 where the teacher has mass
# (attention dropout in training, or fp underflow) then costs p_T * 27.6 instead of inf, and gradients stay finite.
PROB_FLOOR = 1.0e-12


def _token_mask(attention_mask: torch.Tensor | None, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, seq) = {(batch, seq)}"
        )
    return attention_mask.to(device).bool()


def hidden_state_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    kind: str = "mse",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden-state loss between (already projected) student and teacher states of one mapped layer.

    Args:
        student: ``(B, S, H)`` student hidden states projected to the teacher width; carries the gradient.
        teacher: ``(B, S, H)`` teacher hidden states; treated as a constant.
        attention_mask: ``(B, S)`` 1 for real tokens, 0 for padding; None counts every position.
        kind: ``"mse"`` (mean over H of the squared error per token) or ``"cosine"`` (1 - cosine similarity).
    Returns:
        ``(loss_sum, count)``: fp32 sum over real tokens, and the int64 number of real tokens.
    """
    if kind not in HIDDEN_LOSS_KINDS:
        raise ValueError(f"hidden loss kind={kind!r} is not known; expected one of {', '.join(HIDDEN_LOSS_KINDS)}")
    if student.shape != teacher.shape or student.dim() != 3:
        raise ValueError(
            f"student hidden states {tuple(student.shape)} and teacher hidden states {tuple(teacher.shape)} must both "
            "be (batch, seq, hidden) with equal shapes; project the student to the teacher width first"
        )
    mask = _token_mask(attention_mask, student.shape[0], student.shape[1], student.device)
    s, t = student.float(), teacher.detach().float()
    if kind == "mse":
        per_token = (s - t).pow(2).mean(-1)
    else:
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    # where() rather than multiply: whatever sits at a padded position (even inf/NaN) must not reach the sum.
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    return total, mask.sum()


def _match_heads(student: torch.Tensor, teacher: torch.Tensor, heads: str) -> tuple[torch.Tensor, torch.Tensor]:
    hs, ht = student.shape[1], teacher.shape[1]
    if heads not in HEAD_MODES:
        raise ValueError(f"attention heads={heads!r} is not known; expected one of {', '.join(HEAD_MODES)}")
    if heads == "mean" or (heads == "auto" and hs != ht):
        # The mean of per-head distributions is still a distribution over keys, so KL stays well defined.
        return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    if hs != ht:
        raise ValueError(
            f"attention heads='per_head' needs equal head counts, but the student has {hs} heads and the teacher "
            f"{ht}; use heads='auto' or 'mean' to compare head-averaged maps"
        )
    return student, teacher


def attention_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    kind: str = "kl",
    heads: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-map loss for one mapped layer, over real query rows and real keys.

    Args:
        student: ``(B, H_S, S, S)`` student attention probabilities (rows = queries, softmax over keys).
        teacher: ``(B, H_T, S, S)`` teacher attention probabilities; treated as a constant.
        attention_mask: ``(B, S)`` 1 for real tokens; padded queries are not counted and padded keys are dropped.
            Causal maps need nothing extra: their upper triangle is 0 in both maps and 0 * log(...) is 0.
        kind: ``"kl"``: KL(p_T || p_S) per query row, with both rows restricted to the real keys and renormalised
            (a no-op for Hugging Face maps, which already put 0 on padded keys). ``"mse"``: sum over real keys of
            (p_S - p_T)^2 per query row, on the probabilities as given.
        heads: ``"per_head"`` compares head h with head h and needs H_S == H_T; ``"mean"`` compares the
            head-averaged maps; ``"auto"`` is per_head when the counts match and mean otherwise. The per-row value
            is averaged over the compared heads.
    Returns:
        ``(loss_sum, count)``: fp32 sum over real query rows of the head-averaged per-row loss, and the int64
        number of real query rows (= real tokens).
    """
    if kind not in ATTENTION_LOSS_KINDS:
        raise ValueError(
            f"attention loss kind={kind!r} is not known; expected one of {', '.join(ATTENTION_LOSS_KINDS)}"
        )
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"attention maps must be (batch, heads, seq, seq); got student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)}"
        )
    b, _, sq, sk = student.shape
    if (teacher.shape[0], teacher.shape[2], teacher.shape[3]) != (b, sq, sk) or sq != sk:
        raise ValueError(
            f"student attention {tuple(student.shape)} and teacher attention {tuple(teacher.shape)} must share "
            "batch and (seq, seq) dims"
        )
    s, t = _match_heads(student.float(), teacher.detach().float(), heads)
    mask = _token_mask(attention_mask, b, sq, student.device)
    keys = mask[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    s = torch.where(keys, s, zero)
    t = torch.where(keys, t, zero)
    if kind == "kl":
        s = s / s.sum(-1, keepdim=True).clamp_min(PROB_FLOOR)
        t = t / t.sum(-1, keepdim=True).clamp_min(PROB_FLOOR)
        # t == 0 entries (causal upper triangle, padded keys) contribute exactly 0 because the logs are finite.
        per_row = (t * (t.clamp_min(PROB_FLOOR).log() - s.clamp_min(PROB_FLOOR).log())).sum(-1)
    else:
        per_row = (s - t).pow(2).sum(-1)
    per_query = per_row.mean(1)  # (B, S): average over the compared heads
    total = torch.where(mask, per_query, torch.zeros_like(per_query)).sum()
    return total, mask.sum()
