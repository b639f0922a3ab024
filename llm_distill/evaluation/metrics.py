"""Evaluation metrics computed directly (no ``evaluate.load``: it fetches metric scripts from the Hub).

Classification metrics take plain integer sequences; the calibration and teacher-student metrics take logits and
accumulate over batches so that a whole held-out set never has to sit in memory at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..losses.divergences import divergence_from_logprobs
from .stats import ratio_interval


def _as_int_list(values: Sequence[int] | torch.Tensor, name: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def _check_pair(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> tuple[list, list]:
    p, y = _as_int_list(preds, "preds"), _as_int_list(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"preds has {len(p)} entries but labels has {len(y)}; they must be aligned")
    if not p:
        raise ValueError("no examples: preds and labels are empty")
    return p, y


def accuracy(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Fraction of positions where ``preds[i] == labels[i]``."""
    p, y = _check_pair(preds, labels)
    return sum(a == b for a, b in zip(p, y)) / len(y)


def _f1_for_class(p: list[int], y: list[int], cls: int) -> float:
    tp = sum(a == cls and b == cls for a, b in zip(p, y))
    fp = sum(a == cls and b != cls for a, b in zip(p, y))
    fn = sum(a != cls and b == cls for a, b in zip(p, y))
    # 2TP / (2TP + FP + FN) equals 2PR/(P+R) and is defined as 0 when the class is never predicted nor present
    # (the sklearn convention with zero_division=0).
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1_binary(
    preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor, positive_label: int = 1
) -> float:
    """F1 of the ``positive_label`` class (the GLUE/SST-2 'f1')."""
    p, y = _check_pair(preds, labels)
    return _f1_for_class(p, y, positive_label)


def f1_macro(
    preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor, num_classes: int | None = None
) -> float:
    """Unweighted mean of per-class F1 over ``range(num_classes)`` or, if not given, every class seen in either
    ``preds`` or ``labels`` (as sklearn's ``average='macro'``)."""
    p, y = _check_pair(preds, labels)
    classes = range(num_classes) if num_classes is not None else sorted(set(p) | set(y))
    scores = [_f1_for_class(p, y, c) for c in classes]
    return sum(scores) / len(scores)


def matthews_corrcoef(preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004); equals the binary
    (TP·TN − FP·FN)/sqrt(...) for two classes. Returns 0 when the denominator vanishes (a constant predictor)."""
    p, y = _check_pair(preds, labels)
    classes = sorted(set(p) | set(y))
    n = len(y)
    correct = sum(a == b for a, b in zip(p, y))
    pred_counts = [sum(a == c for a in p) for c in classes]
    true_counts = [sum(b == c for b in y) for c in classes]
    cov_yp = correct * n - sum(pk * tk for pk, tk in zip(pred_counts, true_counts))
    cov_pp = n * n - sum(pk * pk for pk in pred_counts)
    cov_yy = n * n - sum(tk * tk for tk in true_counts)
    denom = math.sqrt(cov_pp * cov_yy)
    return cov_yp / denom if denom else 0.0


def classification_metrics(
    preds: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor, num_classes: int | None = None
) -> dict[str, float | None]:
    """accuracy, f1 (positive class 1; only for two classes, else None), f1_macro and mcc."""
    p, y = _check_pair(preds, labels)
    binary = num_classes == 2 if num_classes is not None else set(p) | set(y) <= {0, 1}
    return {
        "accuracy": accuracy(p, y),
        "f1": f1_binary(p, y) if binary else None,
        "f1_macro": f1_macro(p, y, num_classes),
        "mcc": matthews_corrcoef(p, y),
    }


@dataclass
class CalibrationBins:
    """Streaming expected calibration error with equal-width confidence bins (Guo et al. 2017, 15 bins).

    A prediction with confidence c (the max probability) falls into bin ceil(c·n) − 1, i.e. bins are (lo, hi];
    ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|.
    """

    n_bins: int = 15
    count: torch.Tensor = field(init=False)
    conf_sum: torch.Tensor = field(init=False)
    correct_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins={self.n_bins} must be >= 1")
        self.count = torch.zeros(self.n_bins, dtype=torch.float64)
        self.conf_sum = torch.zeros(self.n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(self.n_bins, dtype=torch.float64)

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """probs: ``(N, C)`` probabilities; targets: ``(N,)`` int64 true classes/tokens."""
        conf, pred = probs.float().max(dim=-1)
        self.update_confidence(conf, pred, targets)

    def update_confidence(self, conf: torch.Tensor, pred: torch.Tensor, targets: torch.Tensor) -> None:
        """conf: ``(N,)`` max probability; pred: ``(N,)`` argmax; targets: ``(N,)`` true classes/tokens."""
        conf = conf.double().cpu()
        correct = (pred.cpu() == targets.cpu()).double()
        idx = (torch.ceil(conf * self.n_bins) - 1).clamp(0, self.n_bins - 1).long()
        self.count.index_add_(0, idx, torch.ones_like(conf))
        self.conf_sum.index_add_(0, idx, conf)
        self.correct_sum.index_add_(0, idx, correct)

    def ece(self) -> float | None:
        total = self.count.sum()
        if total == 0:
            return None
        return float((self.correct_sum - self.conf_sum).abs().sum() / total)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """ECE of ``probs`` ``(N, C)`` against ``targets`` ``(N,)``; see ``CalibrationBins``."""
    bins = CalibrationBins(n_bins)
    bins.update(probs, targets)
    value = bins.ece()
    if value is None:
        raise ValueError("no examples: probs is empty")
    return value


class AgreementAccumulator:
    """Teacher-vs-student statistics over counted positions, accumulated batch by batch.

    - ``kl``: mean over counted positions of KL(p_T‖p_S) at T = 1 (nats per token / per example).
    - ``top1_agreement``: fraction where argmax p_S == argmax p_T.
    - ``top5_agreement``: fraction where the teacher's argmax is among the student's 5 most likely classes;
      None when there are 5 classes or fewer (it would be 1 by construction).
    - ``ece_teacher`` / ``ece_student``: 15-bin ECE of each model against the true targets.
    - ``accuracy_teacher`` / ``accuracy_student``: top-1 accuracy against the true targets.
    - ``kl_ci``, ``top1_agreement_ci``, ``top5_agreement_ci``: 95 % bootstrap intervals over units — the rows
      themselves for classifiers, or the groups named by ``update(..., units=...)`` (a causal LM's windows: tokens
      of one window are not independent of each other).
    """

    chunk_elements = 8_000_000  # logits per processing chunk (rows = chunk_elements // C)

    def __init__(self, n_bins: int = 15, top_k: int = 5):
        self.top_k = top_k
        self.kl_sum = 0.0
        self.count = 0
        self.top1 = 0
        self.topk = 0
        self.num_classes: int | None = None
        self.correct_teacher = 0
        self.correct_student = 0
        self.bins_teacher = CalibrationBins(n_bins)
        self.bins_student = CalibrationBins(n_bins)
        # (unit ids (U,), per-unit sums (U, 4): kl, top-1 agreement, top-k agreement, rows) per processed chunk.
        self._units: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        targets: torch.Tensor,
        units: torch.Tensor | None = None,
    ) -> None:
        """student_logits, teacher_logits: ``(N, C)`` rows that count (already masked/shifted);
        targets: ``(N,)`` int64 true class or next token for each row; units: ``(N,)`` int64 id of the independent
        unit each row belongs to (default: every row its own unit)."""
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                "differ; teacher and student must share the label set / vocabulary"
            )
        if student_logits.shape[0] == 0:
            return
        self.num_classes = student_logits.shape[-1]
        targets = targets.to(student_logits.device)
        n = student_logits.shape[0]
        if units is None:
            units = torch.arange(self.count, self.count + n)
        elif units.shape != (n,):
            raise ValueError(f"units has shape {tuple(units.shape)}; expected ({n},), one unit id per row")
        # Rows in chunks: with a 50k-150k vocabulary, a few fp32 (rows, V) temporaries per chunk stay ~32 MB each.
        rows = max(1, self.chunk_elements // self.num_classes)
        for i in range(0, n, rows):
            sl = slice(i, i + rows)
            self._update_chunk(student_logits[sl], teacher_logits[sl], targets[sl], units[sl].cpu())

    def _update_chunk(
        self, s_logits: torch.Tensor, t_logits: torch.Tensor, targets: torch.Tensor, units: torch.Tensor
    ) -> None:
        ls = F.log_softmax(s_logits.float(), dim=-1)
        lt = F.log_softmax(t_logits.float(), dim=-1)
        kl = divergence_from_logprobs(ls, lt, kind="forward_kl")
        self.kl_sum += float(kl.sum())
        self.count += ls.shape[0]
        t_max, t_top1 = lt.max(-1)
        s_max, s_top1 = ls.max(-1)
        top1 = t_top1 == s_top1
        self.top1 += int(top1.sum())
        k = min(self.top_k, ls.shape[-1])
        topk = (ls.topk(k, dim=-1).indices == t_top1.unsqueeze(-1)).any(-1)
        self.topk += int(topk.sum())
        per_row = torch.stack([kl.double(), top1.double(), topk.double(), torch.ones_like(kl, dtype=torch.float64)], 1)
        ids, inverse = torch.unique(units, return_inverse=True)
        sums = torch.zeros(len(ids), 4, dtype=torch.float64).index_add_(0, inverse, per_row.cpu())
        self._units.append((ids, sums))
        self.correct_teacher += int((t_top1 == targets).sum())
        self.correct_student += int((s_top1 == targets).sum())
        # Confidence = max probability = exp(max log-probability); no softmax copy needed.
        self.bins_teacher.update_confidence(t_max.exp(), t_top1, targets)
        self.bins_student.update_confidence(s_max.exp(), s_top1, targets)

    def unit_sums(self) -> torch.Tensor:
        """``(U, 4)`` float64 per-unit sums of KL, top-1 agreement, top-k agreement and rows."""
        ids = torch.cat([i for i, _ in self._units])
        sums = torch.cat([s for _, s in self._units])
        _, inverse = torch.unique(ids, return_inverse=True)
        return torch.zeros(int(inverse.max()) + 1, 4, dtype=torch.float64).index_add_(0, inverse, sums)

    def compute(self) -> dict[str, float | int | list[float] | None]:
        if self.count == 0:
            raise ValueError("no counted positions were seen; check the labels / attention mask of the data")
        units = self.unit_sums()
        has_topk = (self.num_classes or 0) > self.top_k
        return {
            "kl": self.kl_sum / self.count,
            "kl_ci": list(ratio_interval(units[:, 0], units[:, 3])),
            "top1_agreement_ci": list(ratio_interval(units[:, 1], units[:, 3])),
            "top5_agreement_ci": list(ratio_interval(units[:, 2], units[:, 3])) if has_topk else None,
            "num_units": units.shape[0],
            "top1_agreement": self.top1 / self.count,
            "top5_agreement": self.topk / self.count if has_topk else None,
            "ece_teacher": self.bins_teacher.ece(),
            "ece_student": self.bins_student.ece(),
            "accuracy_teacher": self.correct_teacher / self.count,
            "accuracy_student": self.correct_student / self.count,
            "num_counted": self.count,
        }
