"""Divergences against closed forms on hand-made distributions, masks, T^2, dtypes and degenerate inputs."""

import math

import pytest
import torch

from llm_distill.losses import DIVERGENCE_KINDS, divergence, hard_ce

P = [0.5, 0.3, 0.2]  # teacher
Q = [0.2, 0.5, 0.3]  # student


def kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def mix(a, b, w):
    return [w * x + (1 - w) * y for x, y in zip(a, b)]


CLOSED_FORMS = {
    ("forward_kl", 0.5): kl(P, Q),
    ("reverse_kl", 0.5): kl(Q, P),
    ("jsd", 0.5): 0.5 * kl(P, mix(P, Q, 0.5)) + 0.5 * kl(Q, mix(P, Q, 0.5)),
    ("jsd", 0.2): 0.2 * kl(P, mix(P, Q, 0.2)) + 0.8 * kl(Q, mix(P, Q, 0.2)),
    ("jsd", 0.0): kl(P, Q),
    ("jsd", 1.0): kl(Q, P),
    ("skew_kl", 0.1): kl(P, mix(P, Q, 0.1)),
    ("skew_rkl", 0.1): kl(Q, mix(Q, P, 0.1)),
    ("tvd", 0.5): 0.5 * sum(abs(x - y) for x, y in zip(P, Q)),
}


def logits(p):
    return torch.tensor(p).log().unsqueeze(0)


@pytest.mark.parametrize(("kind", "beta"), list(CLOSED_FORMS))
def test_closed_forms(kind, beta):
    got = divergence(logits(Q), logits(P), kind=kind, beta=beta)
    assert got.item() == pytest.approx(CLOSED_FORMS[(kind, beta)], rel=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_identical_logits_give_zero(kind):
    z = torch.randn(4, 7, 50)
    assert divergence(z, z.clone(), kind=kind).abs().item() < 1e-6


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    t = 3.0
    s, te = torch.randn(5, 11), torch.randn(5, 11)
    expected = divergence(s / t, te / t, temperature=1.0, scale_by_t2=False)
    assert divergence(s, te, temperature=t, scale_by_t2=False).item() == pytest.approx(expected.item(), rel=1e-5)
    assert divergence(s, te, temperature=t).item() == pytest.approx(t**2 * expected.item(), rel=1e-5)


def test_jsd_endpoints_are_exactly_forward_and_reverse_kl():
    s, te = torch.randn(6, 20), torch.randn(6, 20)
    assert torch.equal(divergence(s, te, kind="jsd", beta=0.0), divergence(s, te, kind="forward_kl"))
    assert torch.equal(divergence(s, te, kind="jsd", beta=1.0), divergence(s, te, kind="reverse_kl"))


def test_mask_and_reductions():
    s, te = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    per = divergence(s, te, reduction="none", mask=mask)
    full = divergence(s, te, reduction="none")
    assert torch.equal(per[~mask], torch.zeros(3))
    assert torch.allclose(per[mask], full[mask])
    assert divergence(s, te, mask=mask, reduction="sum").item() == pytest.approx(full[mask].sum().item(), rel=1e-6)
    assert divergence(s, te, mask=mask).item() == pytest.approx(full[mask].mean().item(), rel=1e-6)
    # A masked position's logits cannot influence the loss, even when they are garbage.
    s2 = s.clone()
    s2[0, 1] = float("nan")
    assert divergence(s2, te, mask=mask).item() == pytest.approx(divergence(s, te, mask=mask).item(), rel=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_all_masked_gives_zero_with_finite_grads(kind):
    s = torch.randn(2, 4, 10, requires_grad=True)
    loss = divergence(s, torch.randn(2, 4, 10), kind=kind, mask=torch.zeros(2, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_bf16_inputs_give_the_fp32_answer(kind):
    s, te = torch.randn(8, 64) * 3, torch.randn(8, 64) * 3
    s16, t16 = s.bfloat16(), te.bfloat16()
    got = divergence(s16, t16, kind=kind, temperature=2.0)
    assert got.dtype == torch.float32
    want = divergence(s16.float(), t16.float(), kind=kind, temperature=2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_extreme_logits_are_stable():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    te = torch.tensor([[-1e4, 1e4, 0.0]])
    for kind in DIVERGENCE_KINDS:
        loss = divergence(s, te, kind=kind)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), kind


def test_gradient_of_forward_kl_is_student_minus_teacher_probabilities():
    s = torch.randn(3, 8, requires_grad=True)
    te = torch.randn(3, 8)
    t = 2.0
    divergence(s, te, temperature=t, reduction="sum").backward()
    expected = (torch.softmax(s / t, -1) - torch.softmax(te / t, -1)) * t  # d/dz of T^2 * KL = T * (q - p)
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


def test_teacher_gets_no_gradient():
    s = torch.randn(3, 8, requires_grad=True)
    te = torch.randn(3, 8, requires_grad=True)
    divergence(s, te).backward()
    assert te.grad is None


def test_hard_ce_matches_cross_entropy_and_ignores_minus_100():
    z = torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y[0, :2] = -100
    want = torch.nn.functional.cross_entropy(z.view(-1, 7), y.view(-1), ignore_index=-100)
    assert hard_ce(z, y).item() == pytest.approx(want.item(), rel=1e-6)
    assert hard_ce(z, torch.full_like(y, -100)).item() == 0.0


def test_bad_arguments_are_named():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="kind='kl'"):
        divergence(s, s, kind="kl")
    with pytest.raises(ValueError, match="beta=1.5"):
        divergence(s, s, kind="jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature=0"):
        divergence(s, s, temperature=0)
    with pytest.raises(ValueError, match="differ"):
        divergence(s, torch.randn(2, 4))
