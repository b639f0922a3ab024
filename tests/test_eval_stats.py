"""The report's interval and test maths against published values and closed forms."""

import math
import random

import pytest
import torch

from llm_distill.evaluation.stats import (
    binomial_cdf,
    bootstrap_sums,
    independent_difference_interval,
    mcnemar,
    median_interval,
    paired_bootstrap_difference,
    paired_proportions,
    quantile,
    ratio_interval,
    verdict,
    wilson_interval,
    z_value,
)


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [  # Newcombe, Stat. Med. 17:857 (1998), Table II, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_edges_and_errors():
    assert z_value() == pytest.approx(1.959964, abs=1e-6)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(436, 872)  # symmetric around 1/2
    assert lo + hi == pytest.approx(1.0) and hi - lo == pytest.approx(2 * 0.0331, abs=5e-4)  # about ±3.3 points
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


@pytest.mark.parametrize(
    "k1, n1, k2, n2, lo, hi",
    [  # Newcombe, Stat. Med. 17:873 (1998), Table II, method 10 (hybrid score)
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0),
    ],
)
def test_hybrid_score_difference_matches_newcombe(k1, n1, k2, n2, lo, hi):
    got = independent_difference_interval(k1, n1, k2, n2)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


def test_binomial_cdf_against_direct_sum():
    for n, k in [(8, 1), (30, 9), (100, 47), (1, 0)]:
        direct = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        assert binomial_cdf(k, n) == pytest.approx(direct, rel=1e-12)
    assert 0.0 <= binomial_cdf(400, 2000) < 1e-100  # log-space sums: no overflow for large n


def test_mcnemar_published_example():
    # Fagerland, Lydersen & Laake, BMC Med. Res. Methodol. 13:91 (2013): 1 vs 7 discordant pairs give the exact
    # conditional p = 0.070 and mid-p = 0.039 (2·9/256 and 2·(9/256 − 8/512)).
    out = mcnemar(1, 7)
    assert out["exact_p"] == pytest.approx(18 / 256) and out["mid_p"] == pytest.approx(10 / 256)
    assert mcnemar(7, 1) == {**out, "b": 7, "c": 1}
    assert mcnemar(0, 0)["exact_p"] == 1.0 and mcnemar(5, 5)["exact_p"] == 1.0 and mcnemar(5, 5)["mid_p"] < 1.0


def test_paired_proportions_counts_and_interval():
    # 10 both right, 6 only A right, 2 only B right, 2 neither: acc_A 0.8, acc_B 0.6.
    a = [1] * 10 + [1] * 6 + [0] * 2 + [0] * 2
    b = [1] * 10 + [0] * 6 + [1] * 2 + [0] * 2
    out = paired_proportions(a, b)
    assert (out["b"], out["c"], out["n"]) == (6, 2, 20)
    assert out["difference"] == pytest.approx(0.2)
    lo, hi = out["difference_ci"]
    assert -1 <= lo < 0.2 < hi <= 1
    assert out["mid_p"] == pytest.approx(mcnemar(6, 2)["mid_p"]) and out["verdict"] == "within noise"
    swapped = paired_proportions(b, a)
    assert swapped["difference_ci"] == pytest.approx([-hi, -lo])


def test_paired_interval_approaches_wald_for_large_samples():
    # 1000 examples: 700 both, 120 only A, 80 only B, 100 neither.
    a = [1] * 700 + [1] * 120 + [0] * 80 + [0] * 100
    b = [1] * 700 + [0] * 120 + [1] * 80 + [0] * 100
    out = paired_proportions(a, b)
    n, diff = 1000, 0.04
    se = math.sqrt((120 + 80) - (120 - 80) ** 2 / n) / n
    assert out["difference_ci"][0] == pytest.approx(diff - 1.96 * se, abs=2e-3)
    assert out["difference_ci"][1] == pytest.approx(diff + 1.96 * se, abs=2e-3)
    assert out["verdict"] == "better" and out["mid_p"] < 0.01
    assert paired_proportions(b, a)["verdict"] == "worse"


def test_verdict_words():
    assert verdict(0.2, 0.05) == "within noise"
    assert verdict(0.01, 0.05) == "better" and verdict(0.01, -0.05) == "worse"
    assert verdict(0.01, 0.05, higher_is_better=False) == "worse"


def test_median_interval_order_statistics():
    lo, hi, coverage = median_interval(list(range(1, 31)))
    assert (lo, hi) == (10, 21) and coverage == pytest.approx(0.9572, abs=1e-4)  # ranks 10 and 21 of 30
    lo, hi, coverage = median_interval([5, 1, 3, 2, 4])  # too few for 95 %: the range, with its coverage
    assert (lo, hi) == (1, 5) and coverage == pytest.approx(1 - 2 / 32)
    assert quantile([1, 2, 3, 4], 0.25) == pytest.approx(1.75) and quantile([7], 0.9) == 7


def test_bootstrap_is_seeded_and_matches_the_normal_interval():
    rng = random.Random(0)
    values = torch.tensor([rng.gauss(2.0, 1.0) for _ in range(400)], dtype=torch.float64)
    ones = torch.ones_like(values)
    lo, hi = ratio_interval(values, ones)
    mean, se = float(values.mean()), float(values.std()) / 20
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.25 * se) and hi == pytest.approx(
        mean + 1.96 * se, abs=0.25 * se
    )
    assert ratio_interval(values, ones) == (lo, hi)  # same seed, same interval
    # A statistic that is the same in every resample has a zero-width interval.
    const = bootstrap_sums(torch.stack([2 * ones, ones], 1), lambda s: s[:, 0] / s[:, 1])
    assert const == pytest.approx((2.0, 2.0))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_sums(torch.zeros(0, 2), lambda s: s[:, 0])


def test_paired_bootstrap_difference():
    rng = random.Random(1)
    nll = torch.tensor([rng.uniform(50, 70) for _ in range(60)], dtype=torch.float64)
    tokens = torch.full((60,), 20.0, dtype=torch.float64)
    same = paired_bootstrap_difference(nll, tokens, nll, tokens, higher_is_better=False)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and same["verdict"] == "within noise"
    # Model A's NLL is 5 % higher on every window: a paired test sees it at once, although windows vary by ±15 %.
    worse = paired_bootstrap_difference(nll * 1.05, tokens, nll, tokens, higher_is_better=False)
    assert worse["verdict"] == "worse" and worse["p_value"] < 0.01
    lo, hi = worse["difference_ci"]
    assert 0 < lo < worse["difference"] < hi
