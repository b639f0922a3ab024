import copy

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from llm_distill.features import FeatureDistiller, StudentWithFeatures, prepare_for_feature_distillation
from llm_distill.losses.features import attention_loss, hidden_state_loss
from llm_distill.teacher import LiveTeacher


def tiny_bert(layers=4, hidden=32, heads=4, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


def tiny_llama(layers=4, hidden=32, heads=4, kv=2, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def batch(pad_side="right"):
    torch.manual_seed(1)
    ids = torch.randint(1, 64, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    if pad_side == "right":
        mask[0, 4:] = 0
        mask[2, 6:] = 0
    else:
        mask[0, :3] = 0
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return {"input_ids": ids, "attention_mask": mask}


def run(fd, student, teacher_model, inputs):
    teacher = LiveTeacher(teacher_model)
    t_out = teacher(
        inputs, hidden_layers=fd.teacher_hidden_layers, attention_layers=fd.teacher_attention_layers, want_logits=False
    )
    s_out = student(
        **inputs, output_hidden_states=fd.needs_hidden_states or None, output_attentions=fd.needs_attentions or None
    )
    return fd(
        inputs["attention_mask"],
        student_hidden_states=s_out.hidden_states,
        student_attentions=s_out.attentions,
        teacher_hidden_states=t_out.hidden_states,
        teacher_attentions=t_out.attentions,
    )


def perturbed(model, scale, seed=3):
    student = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return student


# ---------------------------------------------------------------- pure functions


def test_hidden_mse_and_cosine_closed_form():
    s = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    total, count = hidden_state_loss(s, t, torch.tensor([[1, 1]]), kind="mse")
    assert count.item() == 2
    torch.testing.assert_close(total, torch.tensor((4.0 / 2) + (4.0 / 2)))
    total, _ = hidden_state_loss(s, t, torch.tensor([[1, 1]]), kind="cosine")
    torch.testing.assert_close(total, torch.tensor(1.0 - 1.0 / 5**0.5 + 0.0))
    # Cosine ignores scale; MSE does not.
    assert hidden_state_loss(3 * t, t, kind="cosine")[0].abs().item() < 1e-6
    assert hidden_state_loss(3 * t, t, kind="mse")[0].item() > 1


def test_attention_kl_closed_form_and_mse():
    t = torch.tensor([0.5, 0.5, 0.0]).expand(1, 1, 3, 3).clone()
    s = torch.tensor([0.25, 0.75, 0.0]).expand(1, 1, 3, 3).clone()
    kl = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    total, count = attention_loss(s, t, torch.tensor([[1, 1, 1]]), kind="kl")
    assert count.item() == 3
    torch.testing.assert_close(total, 3 * kl)
    total, _ = attention_loss(s, t, torch.tensor([[1, 1, 1]]), kind="mse")
    torch.testing.assert_close(total, torch.tensor(3 * (0.0625 + 0.0625)))


def test_padding_values_do_not_change_the_pure_losses():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    hs, ht = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    s_att = torch.softmax(torch.randn(2, 4, 5, 5).masked_fill(~mask.bool()[:, None, None], -1e9), -1)
    t_att = torch.softmax(torch.randn(2, 4, 5, 5).masked_fill(~mask.bool()[:, None, None], -1e9), -1)
    pad = ~mask.bool()
    hs2, ht2 = hs.clone(), ht.clone()
    hs2[pad] = float("nan")
    ht2[pad] = 1e6
    for kind in ("mse", "cosine"):
        torch.testing.assert_close(
            hidden_state_loss(hs, ht, mask, kind=kind), hidden_state_loss(hs2, ht2, mask, kind=kind)
        )
    s2, t2 = s_att.clone(), t_att.clone()
    s2[0, :, 3:, :] = 0.7  # padded query rows
    t2[0, :, :, 3:] = 0.3  # mass on padded keys
    s2[0, :, :3, 3:] = 0.9
    for kind in ("kl", "mse"):
        a, b = attention_loss(s_att, t_att, mask, kind=kind), attention_loss(s2, t2, mask, kind=kind)
        torch.testing.assert_close(a, b)
        assert a[1].item() == 8


def test_attention_heads_modes():
    torch.manual_seed(0)
    s = torch.softmax(torch.randn(2, 2, 4, 4), -1)
    t = torch.softmax(torch.randn(2, 4, 4, 4), -1)
    auto, _ = attention_loss(s, t, kind="kl", heads="auto")
    mean, _ = attention_loss(s, t, kind="kl", heads="mean")
    torch.testing.assert_close(auto, mean)
    manual = attention_loss(s.mean(1, keepdim=True), t.mean(1, keepdim=True), kind="kl")[0]
    torch.testing.assert_close(auto, manual)
    with pytest.raises(ValueError, match="student has 2 heads and the teacher 4"):
        attention_loss(s, t, heads="per_head")
    # Equal heads: per head is the average of per-head KLs, which differs from KL of averaged maps.
    t2 = t[:, :2]
    per_head = attention_loss(s, t2, kind="kl")[0]
    each = sum(attention_loss(s[:, h : h + 1], t2[:, h : h + 1], kind="kl")[0] for h in range(2)) / 2
    torch.testing.assert_close(per_head, each)
    assert not torch.allclose(per_head, attention_loss(s, t2, kind="kl", heads="mean")[0])


def test_causal_maps_and_student_zeros_give_no_nan():
    torch.manual_seed(0)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    s = torch.softmax(logits.masked_fill(causal, float("-inf")), -1)
    t = torch.softmax(torch.randn(2, 4, 5, 5).masked_fill(causal, float("-inf")), -1)
    s_dropped = s * (torch.rand_like(s) > 0.3)  # attention dropout leaves exact zeros where the teacher has mass
    total, _ = attention_loss(s_dropped, t, torch.ones(2, 5), kind="kl")
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()


def test_sums_and_counts_are_accumulation_invariant():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    s, t = torch.randn(4, 4, 8), torch.randn(4, 4, 8)
    full = hidden_state_loss(s, t, mask)
    a, b = hidden_state_loss(s[:2], t[:2], mask[:2]), hidden_state_loss(s[2:], t[2:], mask[2:])
    torch.testing.assert_close(full[0], a[0] + b[0])
    assert full[1] == a[1] + b[1] == 10


# ---------------------------------------------------------------- FeatureDistiller on tiny models


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_exact_copy_gives_zero_and_perturbation_grows(family):
    make = tiny_bert if family == "bert" else tiny_llama
    teacher = make()
    inputs = batch("right")
    fd = FeatureDistiller.from_configs(teacher.config, teacher.config, hidden_map="uniform", attention_map="uniform")
    assert fd.teacher_hidden_layers == [0, 1, 2, 3, 4] and fd.teacher_attention_layers == [1, 2, 3, 4]
    zero = run(fd, copy.deepcopy(teacher), teacher, inputs)
    real = inputs["attention_mask"].sum().item()
    assert zero["hidden"][1].item() == 5 * real and zero["attention"][1].item() == 4 * real
    assert zero["hidden"][0].item() < 1e-10 and abs(zero["attention"][0].item()) < 1e-6
    small = run(fd, perturbed(teacher, 0.01), teacher, inputs)
    large = run(fd, perturbed(teacher, 0.1), teacher, inputs)
    for term in ("hidden", "attention"):
        assert 1e-6 < small[term][0].item() < large[term][0].item()
        assert torch.isfinite(large[term][0])


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_padding_does_not_change_the_loss(family):
    """A padded batch gives the same sums as the real tokens run alone, whatever the pad ids are."""
    make = tiny_bert if family == "bert" else tiny_llama
    teacher, student = make(), make(layers=2, seed=5)
    fd = FeatureDistiller.from_configs(
        student.config, teacher.config, hidden_map="uniform", attention_map="uniform", project_equal_widths=True
    )
    inputs = batch("right")
    padded = run(fd, student, teacher, inputs)
    other_pads = dict(inputs, input_ids=torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], 17))
    again = run(fd, student, teacher, other_pads)
    alone = {k: [0.0, 0] for k in padded}
    for row in range(3):
        n = int(inputs["attention_mask"][row].sum())
        one = {k: v[row : row + 1, :n] for k, v in inputs.items()}
        for k, (total, count) in run(fd, student, teacher, one).items():
            alone[k][0] += total.item()
            alone[k][1] += count.item()
    for k in padded:
        torch.testing.assert_close(padded[k][0], again[k][0])
        assert padded[k][1].item() == alone[k][1]
        assert padded[k][0].item() == pytest.approx(alone[k][0], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_different_widths_and_heads_train_the_projections(family):
    teacher = tiny_bert() if family == "bert" else tiny_llama()
    student = tiny_bert(layers=2, hidden=16, heads=2) if family == "bert" else tiny_llama(2, 16, 2, 1)
    student.train()
    fd = FeatureDistiller.from_configs(
        student.config, teacher.config, hidden_map="uniform", attention_map="last", hidden_loss="cosine"
    )
    assert fd.hidden_pairs == [(0, 0), (1, 2), (2, 4)] and fd.attention_pairs == [(2, 4)]
    assert fd.student_hidden_layers == [0, 1, 2] and fd.teacher_attention_layers == [4]
    inputs = batch("left" if family == "llama" else "right")
    out = run(fd, student, teacher, inputs)
    assert out["hidden"][1] == fd.counts(inputs["attention_mask"])["hidden"] == 3 * inputs["attention_mask"].sum()
    loss = sum(total / count for total, count in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in fd.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not any(p.grad is not None for p in teacher.parameters())


def test_projection_state_is_separate_from_the_student():
    fd = FeatureDistiller(2, 4, 16, 32, hidden_map="uniform")
    assert sorted(fd.state_dict()) == [f"projections.proj.layer_{i}.{w}" for i in range(3) for w in ("bias", "weight")]


def test_errors_name_the_fix():
    teacher = tiny_bert()
    fd = FeatureDistiller.from_configs(teacher.config, teacher.config, hidden_map=None, attention_map="last")
    mask = torch.ones(1, 3)
    with pytest.raises(ValueError, match="output_attentions=True and attn_implementation='eager'"):
        fd(mask, student_attentions=(), teacher_attentions={4: torch.ones(1, 4, 3, 3)})
    with pytest.raises(KeyError, match="teacher attention layer 4 is mapped but the teacher outputs hold layers"):
        fd(mask, student_attentions={4: torch.ones(1, 4, 3, 3)}, teacher_attentions={3: torch.ones(1, 4, 3, 3)})
    with pytest.raises(ValueError, match="needs hidden_map or attention_map"):
        FeatureDistiller(2, 4, 8, 8, hidden_map=None)
    with pytest.raises(ValueError, match="hidden_loss='l1' is not known"):
        FeatureDistiller(2, 4, 8, 8, hidden_loss="l1")


def test_prepare_switches_to_eager_and_removes_attention_dropout():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        attention_probs_dropout_prob=0.5,
    )
    model = BertModel(cfg).train()
    assert model.config._attn_implementation != "eager"
    assert prepare_for_feature_distillation(model, attentions=False) == []
    changed = prepare_for_feature_distillation(model, attentions=True)
    assert model.config._attn_implementation == "eager" and len(changed) == 2
    maps = model(input_ids=torch.randint(0, 64, (2, 6)), output_attentions=True).attentions
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 6))  # no dropout holes even in train mode
    assert model.config.attention_probs_dropout_prob == 0.5  # exported config untouched
    llama = tiny_llama()
    llama.config.attention_dropout = 0.1
    llama = LlamaForCausalLM(llama.config)
    assert len(prepare_for_feature_distillation(llama, attentions=True)) == 4
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in llama.model.layers)


def test_student_with_features_checkpoints_projections_but_exports_the_student(tmp_path):
    teacher = tiny_llama()
    student = tiny_llama(layers=2, hidden=16, heads=2, kv=1, seed=4)
    fd = FeatureDistiller.from_configs(student.config, teacher.config, hidden_map="uniform", attention_map="last")
    wrapped = StudentWithFeatures(student, fd)
    keys = wrapped.state_dict().keys()
    assert any(k.startswith("features.projections.") for k in keys) and any(k.startswith("student.") for k in keys)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("features.")} == {
        f"features.projections.proj.layer_{i}.{w}" for i in range(3) for w in ("weight", "bias")
    }

    inputs = batch("right")
    t_out = LiveTeacher(teacher)(inputs, hidden_layers=fd.teacher_hidden_layers, attention_layers=[4])
    out = wrapped(teacher_outputs=t_out, **inputs)
    assert "hidden_states" not in out and "attentions" not in out and out["logits"].shape == (3, 7, 64)
    direct = run(fd, student, teacher, inputs)
    for term in ("hidden", "attention"):
        torch.testing.assert_close(out["feature_terms"][term][0], direct[term][0])
    out["feature_terms"]["hidden"][0].backward()
    assert fd.projections.proj["layer_1"].weight.grad.abs().sum() > 0

    wrapped.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert not any("proj.layer" in k for k in reloaded.state_dict())
    assert reloaded.config.hidden_size == 16


def test_non_divisible_uniform_map_needs_consent():
    with pytest.raises(ValueError, match=r"layer_map=\[\[0, 0\], \[1, 1\], \[2, 3\], \[3, 4\], \[4, 6\]\]"):
        FeatureDistiller(4, 6, 8, 8, hidden_map="uniform")
    with pytest.warns(UserWarning, match="teacher layers 1, 3, 4, 6"):
        fd = FeatureDistiller(4, 6, 8, 8, hidden_map="uniform", attention_map="uniform", strict_map=False)
    assert fd.teacher_hidden_layers == [0, 1, 3, 4, 6] and fd.teacher_attention_layers == [1, 3, 4, 6]
    assert fd.counts(torch.tensor([[1, 1, 0]])) == {"hidden": 10, "attention": 8}
