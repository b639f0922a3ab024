"""Token-level selection inside the loss: each row's counted tokens for the KD and CE terms are narrowed to the
kept ones before the sums are taken, and the window counts the trainer takes beforehand are the kept counts.

How many tokens a row keeps depends only on its counted tokens (``losses.selection.kept_per_row``), so the trainer
knows every count before the forward passes; which ones depends on the scores computed from this micro-batch's
forward passes (the student being trained, as selective language modelling scores with the current model). The
normalisation rule is unchanged: the sum over kept tokens divided by the number of kept tokens in the window and
across processes. Feature terms keep counting real tokens.
"""

from __future__ import annotations

import torch

from ..losses.selection import head_row_stats, kept_per_row, logit_row_stats, select_tokens
from .spec import DataSelection

TOKEN_TASKS = ("causal_lm", "masked_lm")
# Per-batch sums the trainer adds up and logs (selection_kept_fraction, selection_score_mean/std, ...).
SUM_KEYS = ("sel_counted", "sel_kept", "sel_score", "sel_score_sq", "sel_kept_score")


def _row_stats(side, rows: torch.Tensor, labels: torch.Tensor, *, nll: bool, entropy: bool, vocab_size, chunk_size):
    """NLL / entropy at the counted rows of one model's output: logits ``(B, S, V)``, or ``(hidden (B, S, H),
    weight, bias)`` for the fused path, which has no logits."""
    if isinstance(side, tuple):
        hidden, weight, bias = side
        return head_row_stats(
            hidden[rows], weight, bias, labels, vocab_size=vocab_size, chunk_size=chunk_size, nll=nll, entropy=entropy
        )
    logits = side[rows]
    return logit_row_stats(logits if vocab_size is None else logits[:, :vocab_size], labels, nll=nll, entropy=entropy)


class TokenSelection:
    """The token-level ``data_selection`` of a run (see the module docstring)."""

    def __init__(self, spec: DataSelection, task: str):
        if spec.level != "token":
            raise ValueError(f"TokenSelection is for data_selection.level='token', got {spec.level!r}")
        if task not in TOKEN_TASKS:
            raise ValueError(
                f"data_selection.level='token' needs a token task ({', '.join(TOKEN_TASKS)}), but the run distils "
                f"{task}; use level: sample to select whole examples"
            )
        self.spec = spec

    @classmethod
    def from_args(cls, args, task: str) -> TokenSelection | None:
        spec = args.selection
        return cls(spec, task) if spec is not None and spec.level == "token" else None

    def kept_count(self, mask: torch.Tensor) -> torch.Tensor:
        """How many of ``mask``'s counted tokens the loss will count: known before any forward pass."""
        return kept_per_row(mask, self.spec.keep).sum()

    def scores(self, mask, labels, *, student, teacher, vocab_size=None, chunk_size=256) -> torch.Tensor:
        """``(B, S)`` fp32 scores at the counted positions (0 elsewhere).

        student / teacher: logits ``(B, S, V)`` or ``(final hidden (B, S, H), lm_head weight, bias)``; the student
        is only read for ``excess_loss``.
        """
        kind = self.spec.score
        common = dict(vocab_size=vocab_size, chunk_size=chunk_size)
        rows_labels = labels[mask]
        t_nll, t_entropy = _row_stats(
            teacher, mask, rows_labels, nll=kind != "teacher_entropy", entropy=kind == "teacher_entropy", **common
        )
        if kind == "teacher_nll":
            row_scores = t_nll
        elif kind == "teacher_entropy":
            row_scores = t_entropy
        else:
            s_nll, _ = _row_stats(student, mask, rows_labels, nll=True, entropy=False, **common)
            row_scores = s_nll - t_nll
        scores = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        scores[mask] = row_scores.to(scores.device)
        return scores

    def narrow(self, mask, labels, *, student, teacher, vocab_size=None, chunk_size=256):
        """``(kept mask, labels with -100 off it, {SUM_KEYS: per-batch sums})``."""
        scores = self.scores(
            mask, labels, student=student, teacher=teacher, vocab_size=vocab_size, chunk_size=chunk_size
        )
        kept = select_tokens(mask, scores, self.spec.keep, highest=self.spec.highest)
        with torch.no_grad():
            on = scores[mask]
            sums = {
                "sel_counted": mask.sum(),
                "sel_kept": kept.sum(),
                "sel_score": on.sum(),
                "sel_score_sq": on.pow(2).sum(),
                "sel_kept_score": scores[kept].sum(),
            }
        return kept, labels.masked_fill(~kept, -100), sums


def selection_logs(totals: dict[str, float], prefix: str = "") -> dict[str, float]:
    """What the trainer logs from the summed ``SUM_KEYS``: the kept fraction and the score distribution."""
    counted, kept = totals.get("sel_counted", 0.0), totals.get("sel_kept", 0.0)
    if not counted:
        return {}
    mean = totals["sel_score"] / counted
    logs = {
        "selection_kept_fraction": kept / counted,
        "selection_score_mean": mean,
        "selection_score_std": max(totals["sel_score_sq"] / counted - mean * mean, 0.0) ** 0.5,
    }
    if kept:
        logs["selection_kept_score_mean"] = totals["sel_kept_score"] / kept
    return {prefix + key: value for key, value in logs.items()}
