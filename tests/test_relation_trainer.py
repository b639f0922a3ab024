"""Relation terms through the real Trainer: zero for a copy, other widths without projections, accumulation, RKD's
per-micro-batch normalisation, resume."""

import copy

import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama
from test_feature_trainer import classification_dataset, feature_trainer
from test_trainer import StopAt, flat_params, instruction_dataset, make_args

from llm_distill import DistillationTrainer
from llm_distill.losses.relations import pool_hidden, rkd_angle_loss, rkd_distance_loss

RELATIONAL = dict(
    hidden_weight=0.0,
    attention_weight=1.0,
    attention_on="scores",
    attention_loss="mse",
    relation_weight=1.0,
    relation_heads=4,
    rkd_distance_weight=1.0,
    rkd_angle_weight=2.0,
)
TERMS = ("attention_loss", "relation_loss", "rkd_distance_loss", "rkd_angle_loss")


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_copy_of_the_teacher_has_zero_relation_score_and_rkd_losses(tmp_path, char_tokenizer, family):
    if family == "bert":
        teacher = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=1)
        ds, kw = classification_dataset(8), {}
    else:
        teacher = tiny_llama(len(char_tokenizer), layers=2, hidden=32, heads=4, seed=1)  # GQA: 2 key/value heads
        ds, kw = instruction_dataset(char_tokenizer, n=8), {"processing_class": char_tokenizer}
    student = copy.deepcopy(teacher)
    if family == "bert":
        trainer = feature_trainer(tmp_path, student, teacher, ds, max_steps=1, **RELATIONAL)
    else:
        args = make_args(tmp_path, max_steps=1, kd_weight=0.0, **RELATIONAL)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds, **kw)
    metrics = trainer.evaluate(ds)
    for term in TERMS:
        assert metrics[f"eval_{term}"] < 1e-9, term


def test_relations_between_models_of_different_width_and_heads_train_without_projections(tmp_path):
    teacher = tiny_bert_classifier(layers=4, hidden=48, heads=4, seed=1)
    student = tiny_bert_classifier(layers=2, hidden=32, heads=2, seed=2)
    initial = flat_params(student).clone()
    trainer = feature_trainer(
        tmp_path,
        student,
        teacher,
        classification_dataset(),
        hidden_weight=0.0,
        attention_weight=0.0,
        relation_weight=1.0,
        relation_heads=8,
        layer_map="last",
        max_steps=2,
        save_strategy="no",
    )
    assert len(list(trainer.model.features.parameters())) == 0
    trainer.train()
    logs = trainer.state.log_history
    assert all(e["relation_loss"] > 0 for e in logs if "loss" in e)
    assert not torch.equal(flat_params(trainer.student), initial)
    assert trainer.model.features.relation_pairs == [(2, 4)]


def test_relation_score_and_token_selection_terms_are_invariant_to_gradient_accumulation(tmp_path, char_tokenizer):
    ds = instruction_dataset(char_tokenizer, n=8)
    results, logs = [], []
    for bs, ga in ((8, 1), (4, 2)):
        teacher = tiny_llama(len(char_tokenizer), layers=4, hidden=48, seed=1)
        student = tiny_llama(len(char_tokenizer), layers=2, hidden=32, seed=2)
        args = make_args(
            tmp_path / str(bs),
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            ce_weight=0.3,
            attention_weight=1.0,
            attention_on="scores",
            relation_weight=1.0,
            relation_heads=4,
            data_selection={"score": "excess_loss", "level": "token", "keep": 0.6},
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=char_tokenizer
        )
        trainer.train()
        results.append(flat_params(trainer.model))
        logs.append(trainer.state.log_history[0])
    torch.testing.assert_close(results[1], results[0], atol=2e-6, rtol=1e-5)
    for key in ("loss", "kd_loss", "relation_loss", "attention_loss", "selection_kept_fraction"):
        assert logs[1][key] == pytest.approx(logs[0][key], rel=1e-5), key
    assert 0.5 < logs[0]["selection_kept_fraction"] < 0.7


def test_rkd_is_normalised_by_the_pairs_of_the_whole_window(tmp_path):
    """Two micro-batches: the accumulated gradient is that of (sum of each micro-batch's pair losses) / (all pairs),
    each micro-batch relating its own samples."""
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # both ways see the same forward
    teacher = tiny_bert_classifier(layers=2, hidden=48, heads=4, seed=1)
    student = tiny_bert_classifier(layers=2, hidden=32, heads=2, seed=2, **no_dropout)
    ds = classification_dataset(7)
    trainer = feature_trainer(
        tmp_path,
        student,
        teacher,
        ds,
        hidden_weight=0.0,
        attention_weight=0.0,
        rkd_distance_weight=1.0,
        rkd_angle_weight=2.0,
        save_strategy="no",
    )
    model = trainer.model
    model.train()  # window counts are used in training mode
    batches = [trainer.data_collator([ds[i] for i in rows]) for rows in ([0, 1, 2, 3], [4, 5, 6])]
    counts = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    assert counts["rkd_distance"] == 12 + 6 and counts["rkd_angle"] == 24 + 6
    model.zero_grad()
    for b in batches:
        trainer.compute_loss(model, dict(b), num_items_in_batch={**counts, "kd_tokens": torch.tensor(7)}).backward()
    got = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.student.parameters()]

    model.zero_grad()
    manual = 0.0
    for b in batches:
        with torch.no_grad():
            t_hidden = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        s_hidden = model.student(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True
        )
        s, rows = pool_hidden(s_hidden.hidden_states[-1], b["attention_mask"], how="cls")
        t, _ = pool_hidden(t_hidden.hidden_states[-1], b["attention_mask"], how="cls")
        manual = manual + rkd_distance_loss(s, t, rows)[0] / 18 + 2.0 * rkd_angle_loss(s, t, rows)[0] / 30
    manual.backward()
    want = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.student.parameters()]
    assert any(g.abs().sum() > 0 for g in want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_relation_training_resumes_exactly(tmp_path):
    ds = classification_dataset()
    settings = dict(
        hidden_weight=0.0,
        attention_weight=1.0,
        attention_on="scores",
        relation_weight=1.0,
        relation_heads=2,
        max_steps=4,
    )

    def run(out, stop_at=None, resume=None):
        teacher = tiny_bert_classifier(layers=4, hidden=48, heads=4, seed=1)
        student = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=2)
        trainer = feature_trainer(
            out, student, teacher, ds, callbacks=[StopAt(stop_at)] if stop_at else None, **settings
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    run(tmp_path / "resumed", stop_at=2)
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "out" / "checkpoint-2"))
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), atol=1e-6, rtol=1e-5)
