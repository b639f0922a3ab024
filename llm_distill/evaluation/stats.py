"""The statistics behind a report's intervals and verdicts, in plain Python and torch (no numpy/scipy needed).

- ``wilson_interval``: score interval of a binomial proportion (Wilson 1927; recommended over Wald by Newcombe,
  Stat. Med. 17:857, 1998, and Agresti & Coull, Am. Stat. 52:119, 1998).
- ``paired_proportions``: difference of two accuracies on the same examples: Newcombe's hybrid score interval for
  paired data (method 10 of Newcombe, Stat. Med. 17:2635, 1998) and McNemar's exact and mid-p tests on the
  discordant pairs (mid-p as recommended by Fagerland, Lydersen & Laake, BMC Med. Res. Methodol. 13:91, 2013).
- ``bootstrap_sums``: percentile bootstrap over independent units (examples, or windows of a text) of any
  statistic that is a function of column sums: ratios such as perplexity, KL per token, agreement, and paired
  differences of them.
- ``median_interval``: distribution-free interval of a median from order statistics (binomial ranks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def z_value(confidence: float = CONFIDENCE) -> float:
    """Two-sided normal quantile: 1.959964 for 95 %."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``; (0, 1) when n = 0 (nothing is known)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"successes={successes}, n={n}: need 0 <= successes <= n")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Clamp the rounding error at the ends (k = 0 or n give exactly 0 or 1 in exact arithmetic).
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_binomial_pmf(i: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
    )


def binomial_pmf(k: int, n: int, p: float = 0.5) -> float:
    """P(X = k) for X ~ Binomial(n, p), 0 < p < 1."""
    return math.exp(_log_binomial_pmf(k, n, p)) if 0 <= k <= n else 0.0


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p), 0 < p < 1, summed in log space (no overflow for large n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    terms = [_log_binomial_pmf(i, n, p) for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def mcnemar(b: int, c: int) -> dict[str, float | int]:
    """McNemar's tests of ``b`` (only the first model right) against ``c`` (only the second right) discordant pairs.

    Under H0 (equal accuracy) b ~ Binomial(b + c, 1/2). ``exact_p`` is the two-sided conditional exact p-value,
    ``mid_p`` subtracts half the probability of the observed count, which keeps the test closer to its nominal
    level without the exact test's conservatism.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts b={b}, c={c} must be >= 0")
    n, k = b + c, min(b, c)
    if n == 0:
        return {"b": b, "c": c, "exact_p": 1.0, "mid_p": 1.0}
    below = binomial_cdf(k, n)
    exact = min(1.0, 2 * below)
    mid = min(1.0, 2 * (below - binomial_pmf(k, n) / 2))
    return {"b": b, "c": c, "exact_p": exact, "mid_p": mid}


def _hybrid_score_limits(
    p1: float, l1: float, u1: float, p2: float, l2: float, u2: float, phi: float = 0.0
) -> tuple[float, float]:
    """Newcombe's square-and-add of two Wilson intervals into an interval for p1 - p2; ``phi`` is the correlation
    of the paired outcomes (0 for independent samples, where this is method 10 of Newcombe's eleven)."""
    d = p1 - p2
    lower = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, d - math.sqrt(max(lower, 0.0))), min(1.0, d + math.sqrt(max(upper, 0.0)))


def independent_difference_interval(
    k1: int, n1: int, k2: int, n2: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Interval of k1/n1 - k2/n2 for independent samples (Newcombe 1998, method 10)."""
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    return _hybrid_score_limits(k1 / n1, l1, u1, k2 / n2, l2, u2)


def verdict(p_value: float, difference: float, alpha: float = ALPHA, higher_is_better: bool = True) -> str:
    """'better', 'worse' (the first model against the second) or 'within noise' at level ``alpha``."""
    if p_value >= alpha or difference == 0:
        return "within noise"
    return "better" if (difference > 0) == higher_is_better else "worse"


def paired_proportions(
    correct_a: Sequence[bool] | torch.Tensor, correct_b: Sequence[bool] | torch.Tensor, confidence: float = CONFIDENCE
) -> dict:
    """Model A against model B, scored right/wrong on the same examples.

    Returns ``difference`` = acc_A − acc_B, its paired 95 % interval ``difference_ci`` (Newcombe's method 10 for
    paired data), McNemar's ``b``/``c``/``exact_p``/``mid_p`` and ``verdict`` (from the mid-p test) for A.
    """
    a = [bool(x) for x in (correct_a.tolist() if isinstance(correct_a, torch.Tensor) else correct_a)]
    b_ = [bool(x) for x in (correct_b.tolist() if isinstance(correct_b, torch.Tensor) else correct_b)]
    if len(a) != len(b_) or not a:
        raise ValueError(f"need two equally long, non-empty right/wrong lists; got {len(a)} and {len(b_)}")
    n = len(a)
    both = sum(x and y for x, y in zip(a, b_))
    only_a = sum(x and not y for x, y in zip(a, b_))
    only_b = sum(y and not x for x, y in zip(a, b_))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, confidence)
    l2, u2 = wilson_interval(both + only_b, n, confidence)
    denom = (both + only_a) * (neither + only_b) * (both + only_b) * (neither + only_a)
    # Correlation of the paired outcomes; 0 when a margin is constant (Newcombe sets it so).
    phi = (both * neither - only_a * only_b) / math.sqrt(denom) if denom else 0.0
    lo, hi = _hybrid_score_limits(p1, l1, u1, p2, l2, u2, phi)
    test = mcnemar(only_a, only_b)
    return {
        "difference": p1 - p2,
        "difference_ci": [lo, hi],
        **test,
        "n": n,
        "verdict": verdict(test["mid_p"], p1 - p2),
    }


def bootstrap_statistics(
    columns: torch.Tensor,
    statistic: Callable[[torch.Tensor], torch.Tensor],
    *,
    resamples: int = 2000,
    seed: int = 0,
    chunk: int = 250,
) -> torch.Tensor:
    """``statistic`` of ``resamples`` bootstrap resamples of the rows (independent units) of ``columns``.

    columns: ``(N, K)`` per-unit sums (e.g. NLL and token count of each window). statistic: maps ``(R, K)``
    column sums of R resampled data sets to ``(R,)`` values, e.g. ``lambda s: s[:, 0] / s[:, 1]``. Seeded, so
    the same data give the same values. Non-finite values (a resample with a zero denominator) are dropped.
    """
    if columns.ndim != 2 or columns.shape[0] == 0:
        raise ValueError(f"columns must be a non-empty (N, K) tensor of per-unit sums; got {tuple(columns.shape)}")
    data = columns.double()
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = torch.randint(0, n, (r, n), generator=gen)
        # How often each unit was drawn, then all resampled sums as one matmul: (r, n) @ (n, K).
        counts = torch.zeros(r, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(r, n, dtype=torch.float64))
        values.append(statistic(counts @ data))
    stats = torch.cat(values)
    return stats[torch.isfinite(stats)]


def percentile_interval(stats: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    return float(torch.quantile(stats, tail)), float(torch.quantile(stats, 1 - tail))


def bootstrap_sums(
    columns: torch.Tensor,
    statistic: Callable[[torch.Tensor], torch.Tensor],
    *,
    confidence: float = CONFIDENCE,
    **kw,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``columns`` (see ``bootstrap_statistics``)."""
    return percentile_interval(bootstrap_statistics(columns, statistic, **kw), confidence)


def paired_bootstrap_difference(
    num_a: torch.Tensor,
    den_a: torch.Tensor,
    num_b: torch.Tensor,
    den_b: torch.Tensor,
    *,
    higher_is_better: bool = True,
    confidence: float = CONFIDENCE,
    **kw,
) -> dict:
    """sum(num_a)/sum(den_a) − sum(num_b)/sum(den_b) of two models scored on the same units (``(N,)`` each),
    with a paired percentile-bootstrap interval, the bootstrap p-value of "no difference" (twice the share of
    resampled differences on the far side of 0) and the verdict for model A."""
    columns = torch.stack([num_a, den_a, num_b, den_b], 1).double()
    stats = bootstrap_statistics(columns, lambda s: s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], **kw)
    diff = float(num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum())
    p = min(1.0, 2 * min(float((stats <= 0).double().mean()), float((stats >= 0).double().mean())))
    return {
        "difference": diff,
        "difference_ci": list(percentile_interval(stats, confidence)),
        "p_value": p,
        "verdict": verdict(p, diff, 1 - confidence, higher_is_better),
    }


def ratio_interval(num: torch.Tensor, den: torch.Tensor, **kw) -> tuple[float, float]:
    """Bootstrap interval of ``sum(num) / sum(den)`` over units (``num``, ``den``: ``(N,)``)."""
    return bootstrap_sums(torch.stack([num, den], 1), lambda s: s[:, 0] / s[:, 1], **kw)


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(low, high, achieved coverage) for the median of ``samples`` from order statistics.

    The interval is [x_(j), x_(n+1-j)] (1-based ranks) with the largest j such that the number of samples below
    the median, Binomial(n, 1/2), lies in [j, n-j] with probability >= ``confidence``; e.g. ranks 10 and 21 of 30
    (95.7 %). With fewer than 6 samples no such j exists and the range is returned with its lower coverage.
    """
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples to take a median of")
    best = 0
    for j in range(1, n // 2 + 1):
        if 1 - 2 * binomial_cdf(j - 1, n) >= confidence:
            best = j
        else:
            break
    j = max(best, 1)
    coverage = 1 - 2 * binomial_cdf(j - 1, n)
    return xs[j - 1], xs[n - j], coverage


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), for spreads such as the interquartile range."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("no samples")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
