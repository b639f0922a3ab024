"""Teacher-guided data selection, the tensor part: per-token scores and which tokens a row keeps.

Scores (per counted token; a sample's score is the mean over its counted tokens):

- ``teacher_nll``: ``-log p_T(label)``, the teacher's negative log-likelihood of the data at T = 1;
- ``teacher_entropy``: ``H(p_T)`` of the teacher's distribution at that position;
- ``excess_loss``: student NLL minus teacher NLL, the score of selective language modelling (Lin et al., "Rho-1:
  Not All Tokens Are What You Need", 2024, who use a reference model where the teacher stands here): high where
  the teacher knows a token the student has not learned yet.

Which tokens a row keeps (``select_tokens``): ``kept_per_row`` = ``floor(keep * n + 1/2)`` of its ``n`` counted
tokens (all of them when keep = 1), those with the highest (or lowest) score, ties going to the earlier position.
The number depends only on the row's counted tokens, so a trainer knows every window count before any forward pass
and the selection of a row does not depend on which other rows share its micro-batch or process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused.autograd import auto_chunk_size

SELECTION_SCORES = ("teacher_nll", "teacher_entropy", "excess_loss")
SELECTION_LEVELS = ("sample", "token")
# The end of the score scale that is kept unless the run says otherwise: tokens the student has yet to learn
# (Rho-1), tokens where the teacher's distribution carries the most information, and data the teacher finds likely.
DEFAULT_KEEP_HIGHEST = {"excess_loss": True, "teacher_entropy": True, "teacher_nll": False}


def kept_per_row(mask: torch.Tensor, keep: float) -> torch.Tensor:
    """``(B,)`` int64: how many of each row's counted tokens (``mask`` ``(B, S)`` bool) are kept at fraction ``keep``.

    ``floor(keep * n + 0.5)`` in float64 (0.7 * 10 is 7, not 8); exactly ``n`` when keep >= 1.
    """
    n = mask.sum(-1)
    if keep >= 1.0:
        return n
    return torch.floor(n.double() * keep + 0.5).long()


def select_tokens(mask: torch.Tensor, scores: torch.Tensor, keep: float, *, highest: bool = True) -> torch.Tensor:
    """The kept tokens: in each row, the ``kept_per_row`` counted tokens with the highest (or lowest) score.

    Args:
        mask: ``(B, S)`` bool, the counted tokens. scores: ``(B, S)`` float (values off the mask are ignored).
        keep: fraction in (0, 1]. highest: keep the highest scores (False: the lowest).
    Returns:
        ``(B, S)`` bool, a subset of ``mask`` with exactly ``kept_per_row(mask, keep)`` True per row. Equal scores
        are broken by position (earlier kept first); NaN ranks last.
    """
    if mask.shape != scores.shape or mask.dim() != 2:
        raise ValueError(f"mask {tuple(mask.shape)} and scores {tuple(scores.shape)} must both be (batch, seq)")
    if keep >= 1.0:
        return mask.clone()
    key = scores.detach().double()
    key = key if highest else -key
    top = torch.finfo(key.dtype).max
    # Counted tokens stay finite and strictly above every uncounted one, whatever their score (+-inf, NaN).
    key = torch.nan_to_num(key, nan=-top, posinf=top, neginf=-top)
    key = torch.where(mask, key, torch.full_like(key, float("-inf")))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return mask & (rank < kept_per_row(mask, keep)[:, None])


def logit_row_stats(
    logits: torch.Tensor, labels: torch.Tensor | None = None, *, nll: bool = True, entropy: bool = False
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-row NLL of ``labels`` and entropy of ``softmax(logits)``, fp32, no gradient.

    Args:
        logits: ``(N, V)`` rows (already cut to the real vocabulary); labels: ``(N,)`` int64 (needed for ``nll``).
    Returns:
        ``(nll (N,) | None, entropy (N,) | None)``.
    """
    with torch.no_grad():
        logp = F.log_softmax(logits.float(), dim=-1)
        row_nll = -logp.gather(-1, labels[:, None]).squeeze(-1) if nll else None
        row_entropy = -(logp.exp() * logp).sum(-1) if entropy else None
    return row_nll, row_entropy


def head_row_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    *,
    vocab_size: int | None = None,
    chunk_size: int = 256,
    nll: bool = True,
    entropy: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``logit_row_stats`` of ``hidden @ weight.T + bias`` computed ``chunk_size`` rows at a time, so that no
    ``(N, V)`` logits are held at once (the fused path never makes them).

    Args:
        hidden: ``(N, H)`` final normed hidden states of the counted rows; weight: ``(V, H)`` lm_head; bias ``(V,)``.
        vocab_size: leading logit columns that are real tokens (None: all).
        chunk_size: rows per chunk; 0 picks ``fused.autograd.auto_chunk_size`` for the vocabulary.
    """
    # 0 (the trainer's loss_chunk_size: auto) takes the fused loss's own chunk size, never one row at a time.
    chunk = chunk_size if chunk_size > 0 else auto_chunk_size(weight.shape[0])
    nlls, entropies = [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows].to(weight.dtype), weight, bias)
            logits = logits if vocab_size is None else logits[:, :vocab_size]
            a, b = logit_row_stats(logits, None if labels is None else labels[rows], nll=nll, entropy=entropy)
            nlls.append(a)
            entropies.append(b)
    empty = hidden.new_zeros(0, dtype=torch.float32)
    row_nll = (torch.cat(nlls) if nlls else empty) if nll else None
    row_entropy = (torch.cat(entropies) if entropies else empty) if entropy else None
    return row_nll, row_entropy
