"""Capturing Q/K/V projections and pre-softmax scores from stock BERT and Llama models, and the FeatureDistiller
terms computed from them."""

import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama

from llm_distill.features import AttentionCapture, FeatureDistiller
from llm_distill.features.capture import CAPTURE_IMPLEMENTATION


def batch(vocab=100, lengths=(7, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), seq), generator=g)
    mask = torch.tensor([[1] * n + [0] * (seq - n) for n in lengths])
    return ids.masked_fill(mask == 0, 0), mask


MODELS = {
    "bert": lambda seed=0: tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=seed),
    "llama_gqa": lambda seed=0: tiny_llama(128, layers=2, hidden=32, heads=4, seed=seed),  # 2 key/value heads
}


@pytest.mark.parametrize("name", MODELS)
def test_the_capturing_attention_changes_nothing_and_sees_the_scores_eager_attention_uses(name):
    model = MODELS[name]()
    model.eval()
    ids, mask = batch()
    model.set_attn_implementation("eager")
    eager = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    capture = AttentionCapture(model, [1, 2], projections=True, scores=True, always=True)
    assert model.config._attn_implementation == CAPTURE_IMPLEMENTATION
    out = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-6, rtol=1e-5)
    records = capture.take()
    assert capture.take() == {}  # taken once
    heads, kv_heads = model.config.num_attention_heads, getattr(model.config, "num_key_value_heads", 4)
    head_dim = model.config.hidden_size // heads
    for layer in (1, 2):
        rec = records[layer]
        assert rec["query"].shape == (2, 7, heads * head_dim) and rec["key"].shape == (2, 7, kv_heads * head_dim)
        assert rec["scores"].shape == (2, heads, 7, 7)
        # softmax over the allowed keys of the captured scores is exactly the map eager attention returns
        probs = torch.softmax(rec["scores"].masked_fill(~rec["allowed"], float("-inf")), -1)
        real = mask.bool()
        torch.testing.assert_close(
            probs[real[:, None, :, None].expand_as(probs)],
            eager.attentions[layer - 1][real[:, None, :, None].expand_as(probs)],
            atol=1e-6,
            rtol=1e-5,
        )
    if name == "llama_gqa":  # the model's own causal mask: no query sees a later key
        assert not records[1]["allowed"][0, 0].triu(1).any()
    capture.remove()
    model(input_ids=ids, attention_mask=mask)
    assert capture.take() == {}


def test_exported_config_does_not_keep_the_capturing_attention(tmp_path):
    model = MODELS["llama_gqa"]()
    AttentionCapture(model, [1], projections=False, scores=True, always=True)
    model.save_pretrained(tmp_path)
    assert CAPTURE_IMPLEMENTATION not in (tmp_path / "config.json").read_text()


def permuted_bert(model, order):
    """The same function with its attention heads reordered (query/key/value rows and the output columns)."""
    copy = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=0)
    copy.load_state_dict(model.state_dict())
    d = model.config.hidden_size // model.config.num_attention_heads
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order])
    with torch.no_grad():
        for layer in copy.bert.encoder.layer:
            for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                proj.weight.copy_(proj.weight[index])
                proj.bias.copy_(proj.bias[index])
            layer.attention.output.dense.weight.copy_(layer.attention.output.dense.weight[:, index])
    return copy.eval()


def relation_loss_between(student, teacher, ids, mask, heads):
    fd = FeatureDistiller.from_configs(
        student.config, teacher.config, hidden_map=None, relation_map="uniform", relation_heads=heads
    )
    fd.attach(student, teacher)
    with torch.no_grad():
        teacher(input_ids=ids, attention_mask=mask)
        with fd.recording_student():
            student(input_ids=ids, attention_mask=mask)
        total, count = fd(mask)["relation"]
    return total / count


def test_a_head_permutation_inside_relation_heads_is_invisible_and_across_them_is_not():
    """Both permuted models compute exactly the original function; the relations see the difference only when heads
    move between relation heads (4 heads, 2 relation heads: {0, 1} and {2, 3})."""
    # Weights large enough for peaked relations (the default init of 0.02 makes every relation nearly uniform).
    teacher = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=0, initializer_range=0.5)
    teacher.eval()
    ids, mask = batch()
    reference = teacher(input_ids=ids, attention_mask=mask).logits
    within, across = permuted_bert(teacher, [1, 0, 3, 2]), permuted_bert(teacher, [2, 1, 0, 3])
    for student in (within, across):
        torch.testing.assert_close(student(input_ids=ids, attention_mask=mask).logits, reference)
    assert relation_loss_between(within, teacher, ids, mask, heads=2) < 1e-6
    assert relation_loss_between(across, teacher, ids, mask, heads=2) > 1e-2
    assert relation_loss_between(permuted_bert(teacher, [2, 1, 0, 3]), teacher, ids, mask, heads=1) < 1e-6


def test_terms_add_up_over_rows_so_padding_never_counts():
    """Relation and score sums of a padded batch equal the sums of each row alone (causal Llama, GQA)."""
    student, teacher = (
        tiny_llama(128, layers=2, hidden=32, heads=4, seed=2),
        tiny_llama(128, layers=4, hidden=48, heads=4, seed=1),
    )
    fd = FeatureDistiller.from_configs(
        student.config,
        teacher.config,
        hidden_map=None,
        attention_map="uniform",
        attention_on="scores",
        attention_loss="mse",
        relation_map="uniform",
        relation_heads=4,
        causal=True,
    )
    fd.attach(student, teacher)
    ids, mask = batch(128, lengths=(7, 3), seed=5)

    def terms(ids, mask):
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=mask)
            with fd.recording_student():
                student(input_ids=ids, attention_mask=mask)
            return fd(mask)

    both = terms(ids, mask)
    rows = [terms(ids[i : i + 1, : int(mask[i].sum())], mask[i : i + 1, : int(mask[i].sum())]) for i in range(2)]
    assert fd.counts(mask) == {"attention": 20, "relation": 60}
    for term in ("attention", "relation"):
        assert both[term][1] == fd.counts(mask)[term]
        assert both[term][0].item() == pytest.approx(sum(r[term][0].item() for r in rows), rel=1e-5)


def test_relation_heads_are_checked_against_both_models_before_training():
    student, teacher = MODELS["bert"](), tiny_bert_classifier(layers=4, hidden=48, heads=4, seed=1)
    with pytest.raises(ValueError, match=r"relation_heads=5 does not divide the student's query width 32.*accepts"):
        FeatureDistiller.from_configs(
            student.config, teacher.config, hidden_map=None, relation_map="last", relation_heads=5
        )
    fd = FeatureDistiller.from_configs(
        student.config, teacher.config, hidden_map=None, relation_map="last", relation_heads=8
    )
    assert len(list(fd.parameters())) == 0  # different widths, no projection
