"""Cross-vocabulary losses (ULD, exact map + tails, hybrid) against closed forms and the ordinary divergences."""

import pytest
import torch

from llm_distill.losses import (
    DIVERGENCE_KINDS,
    divergence,
    divergence_from_logprobs,
    exact_map_divergence,
    hybrid_loss,
    matched_mass,
    uld_loss,
    unmatched_uld,
)


def probs_logits(rows):
    return torch.tensor(rows, dtype=torch.float32).log()


# ---------------------------------------------------------------- ULD


def test_uld_closed_form_with_zero_padding():
    # student 3 classes, teacher 4: sorted [0.6, 0.3, 0.1] vs [0.4, 0.3, 0.2, 0.1] padded with one zero.
    s = probs_logits([[0.1, 0.6, 0.3]])
    t = probs_logits([[0.2, 0.1, 0.4, 0.3]])
    expected = abs(0.6 - 0.4) + abs(0.3 - 0.3) + abs(0.1 - 0.2) + abs(0.0 - 0.1)
    assert uld_loss(s, t).item() == pytest.approx(expected, abs=1e-6)
    assert uld_loss(t, s).item() == pytest.approx(expected, abs=1e-6)  # symmetric in the padding too


def test_uld_of_identical_distributions_is_zero_and_permutation_invariant():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(4, 5, 30), torch.randn(4, 5, 50)
    assert uld_loss(z_s, z_s.clone()).item() == 0.0
    perm_s, perm_t = torch.randperm(30), torch.randperm(50)
    assert uld_loss(z_s[..., perm_s], z_s).item() == pytest.approx(0.0, abs=1e-6)
    base = uld_loss(z_s, z_t).item()
    assert base > 0.01
    assert uld_loss(z_s[..., perm_s], z_t).item() == pytest.approx(base, rel=1e-6)
    assert uld_loss(z_s, z_t[..., perm_t]).item() == pytest.approx(base, rel=1e-6)


def test_uld_mask_temperature_and_gradient():
    torch.manual_seed(1)
    z_s = torch.randn(2, 3, 20, requires_grad=True)
    z_t = torch.randn(2, 3, 25)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    per = uld_loss(z_s, z_t, mask=mask, reduction="none")
    assert torch.equal(per[~mask], torch.zeros(int((~mask).sum())))
    mean = uld_loss(z_s, z_t, mask=mask)
    assert mean.item() == pytest.approx(per.sum().item() / 3, rel=1e-6)
    t = 2.0
    unscaled = uld_loss(z_s, z_t, temperature=t, scale_by_t2=False).item()
    assert uld_loss(z_s / t, z_t / t).item() == pytest.approx(unscaled, rel=1e-5)
    assert uld_loss(z_s, z_t, temperature=t).item() == pytest.approx(t * t * unscaled, rel=1e-5)
    (grad,) = torch.autograd.grad(mean, z_s)
    assert torch.isfinite(grad).all() and grad[~mask].abs().max() == 0 and grad[mask].abs().max() > 0


def test_uld_empty_mask_is_zero_not_nan():
    z_s = torch.randn(2, 4, 10, requires_grad=True)
    loss = uld_loss(z_s, torch.randn(2, 4, 12), mask=torch.zeros(2, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z_s.grad).all()


# ---------------------------------------------------------------- exact map


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_exact_with_identity_map_is_the_ordinary_divergence(kind):
    torch.manual_seed(2)
    z_s = torch.randn(3, 4, 16, requires_grad=True)
    z_t = torch.randn(3, 4, 16)
    mask = torch.rand(3, 4) > 0.3
    ids = torch.arange(16)
    ordinary = divergence(z_s, z_t, kind=kind, beta=0.3, temperature=2.0, mask=mask)
    exact = exact_map_divergence(z_s, z_t, ids, ids, kind=kind, beta=0.3, temperature=2.0, mask=mask)
    (g_ordinary,) = torch.autograd.grad(ordinary, z_s)
    (g_exact,) = torch.autograd.grad(exact, z_s)
    assert exact.item() == pytest.approx(ordinary.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(g_exact, g_ordinary, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
def test_exact_through_a_permutation_equals_the_ordinary_loss(kind):
    # The student's vocabulary is the teacher's with ids permuted: student id perm[v] is teacher id v.
    torch.manual_seed(3)
    v = 24
    perm = torch.randperm(v)
    z_t = torch.randn(2, 5, v)
    z_s_teacher_order = torch.randn(2, 5, v)
    z_s = torch.empty_like(z_s_teacher_order)
    z_s[..., perm] = z_s_teacher_order  # the same student distribution, written in the student's own ids
    ordinary = divergence(z_s_teacher_order, z_t, kind=kind)
    teacher_ids = torch.arange(v)
    exact = exact_map_divergence(z_s, z_t, perm, teacher_ids, kind=kind)
    assert exact.item() == pytest.approx(ordinary.item(), rel=1e-5, abs=1e-7)
    # The map's order does not matter, only its pairs.
    order = torch.randperm(v)
    assert exact_map_divergence(z_s, z_t, perm[order], teacher_ids[order], kind=kind).item() == pytest.approx(
        ordinary.item(), rel=1e-5, abs=1e-7
    )


def test_exact_with_a_partial_map_is_the_divergence_over_matched_classes_plus_tails():
    # Student ids 0,1 match teacher ids 2,0; student id 2 and teacher ids 1,3 are unmatched.
    p_s = [0.5, 0.2, 0.3]
    p_t = [0.3, 0.1, 0.4, 0.2]
    s_ids, t_ids = torch.tensor([0, 1]), torch.tensor([2, 0])
    classes_s = torch.tensor([[0.5, 0.2, 0.3]]).log()  # s0, s1, tail s2
    classes_t = torch.tensor([[0.4, 0.3, 0.3]]).log()  # t2, t0, tail t1 + t3
    for kind in DIVERGENCE_KINDS:
        expected = divergence_from_logprobs(classes_s, classes_t, kind=kind, beta=0.4).item()
        got = exact_map_divergence(probs_logits([p_s]), probs_logits([p_t]), s_ids, t_ids, kind=kind, beta=0.4)
        assert got.item() == pytest.approx(expected, rel=1e-5), kind


def test_exact_is_zero_when_matched_and_tail_masses_agree():
    p_s = [0.5, 0.2, 0.3]
    p_t = [0.2, 0.1, 0.5, 0.2]  # t2=0.5, t0=0.2, tail 0.3
    got = exact_map_divergence(probs_logits([p_s]), probs_logits([p_t]), torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert got.item() == pytest.approx(0.0, abs=1e-6)


def test_exact_refuses_bad_maps_and_shapes():
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match="out of range"):
        exact_map_divergence(z, z, torch.tensor([8]), torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D of the same length"):
        exact_map_divergence(z, z, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="every dim but the last"):
        exact_map_divergence(z, torch.randn(3, 8), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="kind='nope'"):
        exact_map_divergence(z, z, torch.tensor([0]), torch.tensor([0]), kind="nope")


def test_exact_with_an_empty_map_compares_only_the_tails_and_stays_finite():
    z_s = torch.randn(3, 10, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss = exact_map_divergence(z_s, torch.randn(3, 12), empty, empty)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(z_s.grad).all()


# ---------------------------------------------------------------- hybrid


def test_hybrid_is_the_weighted_sum_and_reduces_to_exact_for_a_complete_map():
    torch.manual_seed(4)
    z_s, z_t = torch.randn(2, 3, 12), torch.randn(2, 3, 15)
    s_ids, t_ids = torch.tensor([0, 3, 5, 7]), torch.tensor([9, 1, 2, 14])
    exact = exact_map_divergence(z_s, z_t, s_ids, t_ids, kind="jsd")
    rest = unmatched_uld(z_s, z_t, s_ids, t_ids)
    got = hybrid_loss(z_s, z_t, s_ids, t_ids, exact_weight=0.7, uld_weight=2.0, kind="jsd")
    assert got.item() == pytest.approx(0.7 * exact.item() + 2.0 * rest.item(), rel=1e-6)
    assert rest.item() > 0
    full = torch.arange(12)
    z_t12 = torch.randn(2, 3, 12)
    assert unmatched_uld(z_s, z_t12, full, full).item() == 0.0
    assert hybrid_loss(z_s, z_t12, full, full).item() == pytest.approx(
        exact_map_divergence(z_s, z_t12, full, full).item(), rel=1e-6
    )


def test_unmatched_uld_closed_form():
    # unmatched student mass [0.3] (id 2); unmatched teacher mass [0.1, 0.2] (ids 1, 3) -> sorted [0.3] vs [0.2, 0.1].
    s, t = probs_logits([[0.5, 0.2, 0.3]]), probs_logits([[0.3, 0.1, 0.4, 0.2]])
    got = unmatched_uld(s, t, torch.tensor([0, 1]), torch.tensor([2, 0]))
    assert got.item() == pytest.approx(abs(0.3 - 0.2) + 0.1, abs=1e-6)


def test_matched_mass():
    got = matched_mass(probs_logits([[0.3, 0.1, 0.4, 0.2]]), torch.tensor([2, 0]))
    assert got.item() == pytest.approx(0.7, abs=1e-6)


# ---------------------------------------------------------------- accumulation


@pytest.mark.parametrize("loss", ["uld", "exact", "hybrid"])
def test_sums_over_micro_batches_divided_by_the_window_count_equal_the_full_batch_mean(loss):
    # The trainer's rule for every term: sum over counted positions / counted positions of the whole window.
    torch.manual_seed(5)
    z_s, z_t = torch.randn(6, 7, 20), torch.randn(6, 7, 26)
    mask = torch.rand(6, 7) > 0.4
    ids_s, ids_t = torch.arange(0, 20, 2), torch.arange(1, 21, 2)
    fns = {
        "uld": lambda s, t, **kw: uld_loss(s, t, **kw),
        "exact": lambda s, t, **kw: exact_map_divergence(s, t, ids_s, ids_t, **kw),
        "hybrid": lambda s, t, **kw: hybrid_loss(s, t, ids_s, ids_t, **kw),
    }
    fn = fns[loss]
    full = fn(z_s, z_t, mask=mask)
    window = sum(fn(z_s[i : i + 2], z_t[i : i + 2], mask=mask[i : i + 2], reduction="sum") for i in (0, 2, 4))
    assert (window / mask.sum()).item() == pytest.approx(full.item(), rel=1e-5)
