"""Sparse (top-k + tail, sampled) divergences against the dense ones."""

import pytest
import torch

from llm_distill.losses import DIVERGENCE_KINDS, SparseTargets, divergence, sparse_divergence


def topk_targets(teacher_logits, k, temperature=1.0):
    logp = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = logp.topk(k, dim=-1)
    tail = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), -1)  # exact, -inf when k = V
    return SparseTargets(ids=ids, logprobs=values, tail_logprobs=tail)


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_k_equal_vocab_matches_dense(kind, temperature):
    s = torch.randn(3, 4, 16, requires_grad=True)
    te = torch.randn(3, 4, 16)
    mask = torch.rand(3, 4) > 0.3
    dense = divergence(s, te, kind=kind, temperature=temperature, mask=mask)
    sparse = sparse_divergence(s, topk_targets(te, 16, temperature), kind=kind, temperature=temperature, mask=mask)
    (gd,) = torch.autograd.grad(dense, s)
    (gs,) = torch.autograd.grad(sparse, s)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(gs, gd, atol=1e-5)


def test_error_shrinks_as_k_grows():
    torch.manual_seed(0)
    s, te = torch.randn(64, 200), torch.randn(64, 200) * 3
    dense = divergence(s, te).item()
    errors = [abs(sparse_divergence(s, topk_targets(te, k)).item() - dense) for k in (4, 32, 128, 200)]
    assert errors[0] > errors[1] > errors[2] > errors[3] - 1e-7
    assert errors[3] < 1e-5


def test_sampled_targets_are_unbiased_for_forward_kl():
    torch.manual_seed(0)
    s, te = torch.randn(1, 30), torch.randn(1, 30) * 2
    logp = torch.log_softmax(te, -1)
    draws = torch.multinomial(logp.exp().expand(4000, -1), 16, replacement=True)  # 4000 independent estimates
    estimates = []
    for row in draws:
        ids, counts = row.unique(return_counts=True)
        t = SparseTargets(ids=ids[None], logprobs=logp[0, ids][None], weights=(counts / 16.0)[None])
        estimates.append(sparse_divergence(s, t).item())
    mean = sum(estimates) / len(estimates)
    assert mean == pytest.approx(divergence(s, te).item(), rel=0.03)


def test_sampled_targets_refuse_kinds_without_an_estimator():
    t = SparseTargets(ids=torch.tensor([[1]]), logprobs=torch.tensor([[-0.1]]), weights=torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="reverse_kl"):
        sparse_divergence(torch.randn(1, 5), t, kind="reverse_kl")


def test_padded_positions_with_minus_inf_do_not_poison_gradients():
    s = torch.randn(2, 10, requires_grad=True)
    t = topk_targets(torch.randn(2, 10), 3)
    t.logprobs[1] = float("-inf")
    t.tail_logprobs[1] = float("-inf")
    for kind in DIVERGENCE_KINDS:
        loss = sparse_divergence(s, t, kind=kind, mask=torch.tensor([True, False]))
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(g).all(), kind
