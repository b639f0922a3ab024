"""Classification, calibration and teacher-student metrics against values worked out by hand."""

import math

import pytest
import torch

from llm_distill.evaluation.common import rnd
from llm_distill.evaluation.metrics import (
    AgreementAccumulator,
    accuracy,
    classification_metrics,
    expected_calibration_error,
    f1_binary,
    f1_macro,
    matthews_corrcoef,
)


def test_binary_metrics_hand_computed():
    # TP=2 (idx 0,1), FP=2 (idx 2,3), FN=0, TN=1 (idx 4)
    preds, labels = [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]
    assert accuracy(preds, labels) == pytest.approx(3 / 5)
    assert f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 2 + 0))
    # class 0: TP=1, FP=0, FN=2 -> F1 = 2/4
    assert f1_macro(preds, labels) == pytest.approx((2 / 3 + 0.5) / 2)
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 2 / sqrt(4·2·3·1)
    assert matthews_corrcoef(preds, labels) == pytest.approx(2 / math.sqrt(24))
    m = classification_metrics(torch.tensor(preds), torch.tensor(labels), num_classes=2)
    assert m["accuracy"] == pytest.approx(0.6) and m["f1"] == pytest.approx(2 / 3)


def test_multiclass_mcc_and_macro_f1():
    preds, labels = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    # correct=4, n=6, pred counts (2,2,2), true counts (1,3,2): (4·6 − 12) / sqrt((36 − 12)(36 − 14))
    assert matthews_corrcoef(preds, labels) == pytest.approx(12 / math.sqrt(24 * 22))
    # per class F1 = 2TP/(2TP+FP+FN): c0 2/(2+1+0), c1 4/(4+0+1), c2 2/(2+1+1)
    assert f1_macro(preds, labels) == pytest.approx((2 / 3 + 4 / 5 + 2 / 4) / 3)
    m = classification_metrics(preds, labels, num_classes=3)
    assert m["f1"] is None  # binary F1 is undefined for three classes
    sk = pytest.importorskip("sklearn.metrics")
    assert matthews_corrcoef(preds, labels) == pytest.approx(sk.matthews_corrcoef(labels, preds))
    assert f1_macro(preds, labels) == pytest.approx(sk.f1_score(labels, preds, average="macro"))


def test_degenerate_cases():
    assert matthews_corrcoef([1, 1, 1], [0, 1, 1]) == 0.0  # constant predictor: zero denominator
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positive anywhere
    with pytest.raises(ValueError, match="aligned"):
        accuracy([1, 0], [1])


def _probs(confidences_and_classes, num_classes=2):
    rows = []
    for conf, cls in confidences_and_classes:
        row = [(1 - conf) / (num_classes - 1)] * num_classes
        row[cls] = conf
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_ece_hand_computed():
    # Four predictions of class 0 in four different 1/15-wide bins: ECE = mean |correct − confidence|.
    probs = _probs([(0.9, 0), (0.75, 0), (0.62, 0), (0.55, 0)])
    targets = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probs, targets) == pytest.approx((0.1 + 0.75 + 0.38 + 0.45) / 4)
    # 0.91 (right) and 0.93 (wrong) share bin 13: 2/3·|0.5 − 0.92|; 0.62 alone: 1/3·|1 − 0.62|
    probs = _probs([(0.91, 1), (0.93, 1), (0.62, 0)])
    targets = torch.tensor([1, 0, 0])
    assert expected_calibration_error(probs, targets) == pytest.approx(2 / 3 * 0.42 + 1 / 3 * 0.38)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_agreement_hand_computed():
    log = math.log
    teacher = [
        [log(p) for p in (0.5, 0.25, 0.125, 0.0625, 0.03125, 0.03125)],
        [0.0, 3.0, 1.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    student = [
        [0.5, 0.1, 0.2, 0.3, 0.4, log(2)],  # argmax 5 (≠ teacher's 0), but 0 is in its top 5
        list(teacher[1]),  # identical: KL 0
        [-5.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # teacher's argmax 0 is its least likely class
    ]
    targets = torch.tensor([0, 1, 5])
    acc = AgreementAccumulator()
    # Two updates: the accumulator must give the same as one pass over all rows.
    acc.update(torch.tensor(student[:2]), torch.tensor(teacher[:2]), targets[:2])
    acc.update(torch.tensor(student[2:]), torch.tensor(teacher[2:]), targets[2:])
    out = acc.compute()

    def kl(t, s):
        p, q = _softmax(t), _softmax(s)
        return sum(pi * (log(pi) - log(qi)) for pi, qi in zip(p, q))

    expected_kl = sum(kl(t, s) for t, s in zip(teacher, student)) / 3
    assert out["kl"] == pytest.approx(expected_kl, rel=1e-5)
    assert out["top1_agreement"] == pytest.approx(1 / 3)
    assert out["top5_agreement"] == pytest.approx(2 / 3)
    assert out["accuracy_teacher"] == pytest.approx(2 / 3)  # argmaxes 0, 1, 0 vs targets 0, 1, 5
    assert out["accuracy_student"] == pytest.approx(2 / 3)  # argmaxes 5, 1, 5
    ece_t = expected_calibration_error(torch.softmax(torch.tensor(teacher), -1), targets)
    assert out["ece_teacher"] == pytest.approx(ece_t)
    # teacher confidences: 0.5 (right), softmax([0,3,1,0,0,0])[1] (right), softmax([2,0,...])[0] (wrong)
    c2, c3 = _softmax(teacher[1])[1], _softmax(teacher[2])[0]
    assert ece_t == pytest.approx(((1 - 0.5) + (1 - c2) + c3) / 3)
    assert out["num_counted"] == 3


def test_agreement_chunking_matches_one_pass(monkeypatch):
    torch.manual_seed(0)
    s, t = torch.randn(50, 12) * 3, torch.randn(50, 12) * 3
    targets = torch.randint(0, 12, (50,))
    whole = AgreementAccumulator()
    whole.update(s, t, targets)
    monkeypatch.setattr(AgreementAccumulator, "chunk_elements", 12 * 7)  # 7 rows per chunk
    chunked = AgreementAccumulator()
    chunked.update(s, t, targets)
    a, b = whole.compute(), chunked.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_agreement_top5_is_none_for_few_classes():
    acc = AgreementAccumulator()
    acc.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    out = acc.compute()
    assert out["top5_agreement"] is None and out["top1_agreement"] == 0.0


def test_rnd_rule():
    assert rnd(0.123456789) == 0.1235
    assert rnd(3.2e-6) == 3.2e-06  # small values keep significant digits instead of collapsing to 0
    assert rnd({"a": [1, 2.00004, None, "x"]}) == {"a": [1, 2.0, None, "x"]}


def test_agreement_intervals_resample_units():
    torch.manual_seed(0)
    s, t = torch.randn(60, 8) * 2, torch.randn(60, 8) * 2
    targets = torch.randint(0, 8, (60,))
    rows = AgreementAccumulator()
    rows.update(s, t, targets)
    windows = AgreementAccumulator()
    # Three updates, rows of one window spread over two of them: units are grouped by id, not by update.
    units = torch.arange(60) // 6
    windows.update(s[:30], t[:30], targets[:30], units=units[:30])
    windows.update(s[30:33], t[30:33], targets[30:33], units=units[30:33])
    windows.update(s[33:], t[33:], targets[33:], units=units[33:])
    a, b = rows.compute(), windows.compute()
    assert a["num_units"] == 60 and b["num_units"] == 10
    for key in ("kl", "top1_agreement", "top5_agreement"):
        assert a[key] == pytest.approx(b[key])  # the point estimate does not depend on the grouping
        for out in (a, b):
            lo, hi = out[f"{key}_ci"]
            assert lo <= out[key] <= hi
    assert b["top1_agreement_ci"] != a["top1_agreement_ci"]  # resampled by window, not by row
    with pytest.raises(ValueError, match="one unit id per row"):
        windows.update(s[:2], t[:2], targets[:2], units=units[:3])
