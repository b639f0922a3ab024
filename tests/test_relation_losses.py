"""Relation losses as pure functions: MiniLMv2 relations, pre-softmax scores, RKD, and the token-selection rule."""

import math

import pytest
import torch

from llm_distill.losses import attention_loss
from llm_distill.losses.relations import (
    attention_relation_loss,
    attention_score_loss,
    pool_hidden,
    rkd_angle_loss,
    rkd_distance_loss,
)
from llm_distill.losses.selection import kept_per_row, select_tokens


def padded_mask(lengths, seq):
    return torch.tensor([[1] * n + [0] * (seq - n) for n in lengths])


# ---- MiniLMv2 relations -----------------------------------------------------------------------------------------


def test_relation_loss_is_zero_for_the_same_projections_and_counts_real_queries():
    x = torch.randn(3, 6, 24)
    mask = padded_mask([6, 4, 1], 6)
    total, count = attention_relation_loss(x, x.clone(), mask, heads=4)
    assert total.abs() < 1e-6 and count == 11


def test_relation_loss_by_hand():
    """One relation head, one real query row of two keys: KL between two 2-way softmaxes of A A^T / sqrt(d)."""
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    total, count = attention_relation_loss(s, t, torch.tensor([[1, 1]]), heads=1)
    d = math.sqrt(2.0)
    expected = 0.0
    for a_s, a_t in ((s[0], t[0]),):
        ls = torch.log_softmax(a_s @ a_s.T / d, -1)
        lt = torch.log_softmax(a_t @ a_t.T / d, -1)
        expected = (lt.exp() * (lt - ls)).sum()
    assert count == 2 and total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_relations_are_invariant_to_permuting_columns_inside_a_relation_head_only():
    """Property: with A split into relation heads A_r of contiguous columns, A_r P (P a permutation of A_r's columns)
    gives A_r P P^T A_r^T = A_r A_r^T, so the relation loss does not change; a permutation that moves columns
    between relation heads changes which dot products are summed together, and (generically) the loss."""
    torch.manual_seed(0)
    b, s, heads, head_dim, groups = 2, 7, 6, 4, 3  # 6 attention heads of 4 = 24 columns, 3 relation heads of 8
    student, teacher = torch.randn(b, s, heads * head_dim), torch.randn(b, s, heads * head_dim)
    mask = padded_mask([7, 5], s)
    base, _ = attention_relation_loss(student, teacher, mask, heads=groups)

    def permute_heads(x, order):
        return x.view(b, s, heads, head_dim)[:, :, order].reshape(b, s, -1)

    within = [1, 0, 2, 3, 5, 4]  # heads (0, 1) | (2, 3) | (4, 5) stay in their relation head
    assert attention_relation_loss(permute_heads(student, within), teacher, mask, heads=groups)[0] == pytest.approx(
        base.item(), rel=1e-5
    )
    columns = torch.randperm(8)  # any column order inside one relation head, not only whole attention heads
    shuffled = student.clone()
    shuffled[..., 8:16] = student[..., 8 + columns]
    assert attention_relation_loss(shuffled, teacher, mask, heads=groups)[0] == pytest.approx(base.item(), rel=1e-5)
    across = [2, 1, 0, 3, 4, 5]  # heads 0 and 2 swap relation heads
    moved, _ = attention_relation_loss(permute_heads(student, across), teacher, mask, heads=groups)
    assert abs(moved.item() - base.item()) > 1e-3 * base.item()


def test_relations_compare_different_widths_without_projection_and_refuse_a_bad_head_count():
    student, teacher = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 40)
    total, count = attention_relation_loss(student, teacher, heads=4)
    total.backward()
    assert count == 10 and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="relation_heads=3 does not divide the teacher's width 40"):
        attention_relation_loss(student, teacher, heads=3)


def test_relations_ignore_padding_and_causal_future_keys():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = padded_mask([6, 3], 6)
    for causal in (False, True):
        base = attention_relation_loss(student, teacher, mask, heads=2, causal=causal)
        noisy = student.clone()
        noisy[1, 3:] += 100 * torch.randn(3, 8)  # padded positions: never queries, never keys
        assert torch.equal(attention_relation_loss(noisy, teacher, mask, heads=2, causal=causal)[1], base[1])
        assert attention_relation_loss(noisy, teacher, mask, heads=2, causal=causal)[0] == pytest.approx(
            base[0].item(), rel=1e-6
        )
    # Causal: the last real token is a key for no earlier query, so changing it moves only its own row.
    last = student.clone()
    last[0, 5] += 1.0
    full = attention_relation_loss(last, teacher, mask, heads=2, causal=True)[0]
    first_rows = attention_relation_loss(student[:, :5], teacher[:, :5], mask[:, :5], heads=2, causal=True)[0]
    same_rows = attention_relation_loss(last[:, :5], teacher[:, :5], mask[:, :5], heads=2, causal=True)[0]
    assert first_rows == pytest.approx(same_rows.item(), rel=1e-6) and full != pytest.approx(first_rows.item())


# ---- pre-softmax scores -----------------------------------------------------------------------------------------


def test_scores_at_masked_positions_never_count():
    torch.manual_seed(2)
    b, h, s = 2, 3, 5
    student, teacher = torch.randn(b, h, s, s), torch.randn(b, h, s, s)
    mask = padded_mask([5, 3], s)
    allowed = torch.ones(s, s, dtype=torch.bool).tril()[None, None]  # a causal model's own mask
    blocked = ~(mask[:, None, None, :].bool() & allowed) | ~mask[:, None, :, None].bool()
    for kind in ("mse", "kl"):
        base = attention_score_loss(student, teacher, mask, allowed=allowed, kind=kind)
        noisy_s = torch.where(blocked, student + 1e4 * torch.randn_like(student), student)
        noisy_t = torch.where(blocked, teacher - 1e4, teacher)
        again = attention_score_loss(noisy_s, noisy_t, mask, allowed=allowed, kind=kind)
        assert again[0] == pytest.approx(base[0].item(), rel=1e-6) and again[1] == base[1] == 8
        moved = attention_score_loss(student + (~blocked) * 0.5, teacher, mask, allowed=allowed, kind=kind)
        assert kind == "kl" or moved[0] != pytest.approx(base[0].item())


def test_score_kl_equals_the_kl_of_the_attention_probabilities():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    mask = padded_mask([6, 4], 6)
    allowed = mask[:, None, None, :].bool()
    probs = [torch.softmax(x.masked_fill(~allowed, -1e9), -1) for x in (student, teacher)]
    on_probs = attention_loss(*probs, mask, kind="kl")
    on_scores = attention_score_loss(student, teacher, mask, kind="kl")
    assert on_scores[0].item() == pytest.approx(on_probs[0].item(), rel=1e-4) and on_scores[1] == on_probs[1]


def test_score_mse_by_hand_and_mean_over_heads_when_counts_differ():
    student = torch.zeros(1, 2, 2, 2)
    teacher = torch.ones(1, 4, 2, 2)
    total, count = attention_score_loss(student, teacher, kind="mse")  # head means: 0 vs 1, mean over 2 keys
    assert count == 2 and total.item() == pytest.approx(2.0)
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]  # rows see 1, 2, 3 keys: each row weighs 1
    total, _ = attention_score_loss(torch.zeros(1, 1, 3, 3), torch.full((1, 1, 3, 3), 2.0), allowed=causal)
    assert total.item() == pytest.approx(12.0)


# ---- RKD --------------------------------------------------------------------------------------------------------


def test_rkd_is_zero_for_a_similar_copy_of_any_width():
    """Distances are normalised by their mean and angles are scale-free: a scaled, rotated, shifted copy embedded in
    a wider space has the same relations."""
    torch.manual_seed(4)
    teacher = torch.randn(6, 5)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    student = torch.cat([teacher, torch.zeros(6, 3)], dim=1) @ rotation * 3.0 + 7.0
    for loss, count in ((rkd_distance_loss, 30), (rkd_angle_loss, 120)):
        total, n = loss(student, teacher)
        assert total.item() < 1e-8 and n == count


def test_rkd_counts_rows_and_has_finite_gradients_for_duplicates():
    student = torch.randn(5, 4)
    student.data[1] = student.data[0]  # two identical samples: distance 0
    student.requires_grad_(True)
    teacher = torch.randn(5, 6)
    rows = torch.tensor([True, True, True, False, True])
    d, nd = rkd_distance_loss(student, teacher, rows)
    a, na = rkd_angle_loss(student, teacher, rows)
    (d + a).backward()
    assert nd == 12 and na == 24 and torch.isfinite(student.grad).all()
    assert student.grad[3].abs().sum() == 0  # a row that does not take part gets no gradient
    assert rkd_distance_loss(student[:1], teacher[:1])[1] == 0 and rkd_angle_loss(student[:2], teacher[:2])[1] == 0


def test_rkd_distance_by_hand():
    teacher = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 3, 2: mean 2
    student = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1: mean 4/3
    total, count = rkd_distance_loss(student, teacher)
    pairs = [(1 / (4 / 3), 1 / 2), (2 / (4 / 3), 3 / 2), (1 / (4 / 3), 2 / 2)]
    huber = [0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in pairs]
    assert count == 6 and total.item() == pytest.approx(2 * sum(huber), rel=1e-6)


def test_pooling_cls_takes_the_first_real_token_and_mean_the_real_tokens():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right and left padding
    cls, rows = pool_hidden(hidden, mask, how="cls")
    mean, _ = pool_hidden(hidden, mask, how="mean")
    assert torch.equal(cls, torch.stack([hidden[0, 0], hidden[1, 1]])) and rows.all()
    assert torch.allclose(mean, torch.stack([hidden[0, :2].mean(0), hidden[1, 1:].mean(0)]))


# ---- token selection ----------------------------------------------------------------------------------------------


def test_kept_counts_round_half_up_and_keep_everything_at_one():
    mask = padded_mask([10, 3, 1, 0], 10).bool()
    assert kept_per_row(mask, 0.7).tolist() == [7, 2, 1, 0]
    assert kept_per_row(mask, 0.5).tolist() == [5, 2, 1, 0]
    assert kept_per_row(mask, 1.0).tolist() == [10, 3, 1, 0]


def test_with_fixed_scores_the_kept_tokens_are_exactly_the_expected_ones():
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]]).bool()
    scores = torch.tensor([[9.0, 0.5, 3.0, -1.0, 3.0, 2.0, 8.0], [1.0, float("nan"), 1.0, 5, 5, 5, 5]])
    high = select_tokens(mask, scores, 0.6, highest=True)  # 5 counted -> 3 kept; 3 counted -> 2 kept
    assert high.int().tolist() == [[0, 0, 1, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0, 0]]
    low = select_tokens(mask, scores, 0.6, highest=False)
    assert low.int().tolist() == [[0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0, 0]]
    tie = select_tokens(mask, torch.zeros(2, 7), 0.4)  # equal scores: the earlier positions
    assert tie.int().tolist() == [[0, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert torch.equal(select_tokens(mask, scores, 1.0), mask)
