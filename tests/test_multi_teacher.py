"""Several teachers: identical teachers equal one (mixture and sum), routing sends each row to its teacher,
the mixture is the weighted mixture of tempered distributions, per-teacher terms are logged."""

import copy

import pytest
import torch
from conftest import tiny_llama
from datasets import Dataset
from test_trainer import PROMPTS, RESPONSES, flat_params, make_args

from llm_distill import DistillationTrainer
from llm_distill.data import DataConfig, tokenize_instruction, with_sample_ids
from llm_distill.data.teachers import add_teacher_columns
from llm_distill.losses import divergence
from llm_distill.tasks import targets


def routed_dataset(tokenizer, n=16, column=("a", "b")):
    raw = Dataset.from_dict(
        {
            "prompt": (PROMPTS * 4)[:n],
            "response": (RESPONSES * 4)[:n],
            "teacher": [column[i % len(column)] for i in range(n)],
        }
    )
    cfg = DataConfig(path="x.json", task="instruction")
    encoded = tokenize_instruction(raw, tokenizer, cfg)
    return with_sample_ids(
        add_teacher_columns(encoded, raw, tokenizer, cfg, teacher_column="teacher", teacher_names=["a", "b"])
    )


def train(tmp_path, tokenizer, teacher_model, steps=2, **kw):
    student = tiny_llama(len(tokenizer), seed=2)
    args = make_args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=steps,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        ce_weight=0.5,
        temperature=2.0,
        **kw,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher_model,
        args=args,
        train_dataset=routed_dataset(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("mode", ["mixture", "sum"])
def test_two_identical_teachers_equal_one_teacher(tmp_path, char_tokenizer, mode):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    one = train(tmp_path / "one", char_tokenizer, copy.deepcopy(teacher))
    two = train(
        tmp_path / "two",
        char_tokenizer,
        [copy.deepcopy(teacher), copy.deepcopy(teacher)],
        teachers=[{"path": "t", "name": "a", "weight": 3.0}, {"path": "t", "name": "b"}],
        multi_teacher=mode,
    )
    # 0.75 * g + 0.25 * g is g up to one rounding: weights agree to fp32 precision, not bit for bit.
    torch.testing.assert_close(flat_params(two.model), flat_params(one.model), atol=1e-7, rtol=1e-5)
    for a, b in zip(one.state.log_history[:-1], two.state.log_history[:-1]):
        # The mixture's log(0.25 p + 0.75 p) is log p up to fp32 rounding of the log-probabilities (T^2 = 4 times).
        assert b["kd_loss"] == pytest.approx(a["kd_loss"], rel=1e-5, abs=1e-6)
        if mode == "sum":  # each teacher's own term and agreement are logged
            assert b["kd_loss/a"] == pytest.approx(a["kd_loss"], rel=1e-5)
            assert b["kd_loss/b"] == pytest.approx(a["kd_loss"], rel=1e-5)
            assert b["agreement/a"] == pytest.approx(a["agreement"], rel=1e-5)


def _manual_kd(student, teachers, batch, pick, temperature=2.0):
    """Sum over rows of KD(student row, teacher pick(row) row) computed one row at a time."""
    mask, _ = targets(batch, "causal_lm")
    total = 0.0
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for b in range(s.shape[0]):
            t = pick(b, teachers, batch)
            total += divergence(s[b], t[b], temperature=temperature, mask=mask[b], reduction="sum").item()
    return total / mask.sum().item()


@pytest.mark.parametrize("subset_rows", [True, False])
def test_routing_sends_each_row_to_its_teacher(tmp_path, char_tokenizer, subset_rows):
    teachers = [tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=s) for s in (1, 5)]
    student = tiny_llama(len(char_tokenizer), seed=2)
    args = make_args(tmp_path, teachers=["a", "b"], teacher_column="teacher", temperature=2.0)
    ds = routed_dataset(char_tokenizer)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=args, train_dataset=ds, processing_class=char_tokenizer
    )
    trainer.teacher.subset_rows = subset_rows  # False: what sharded teachers do (every teacher sees every row)
    batch = trainer.data_collator([ds[i] for i in range(5)])
    student.eval()
    loss = trainer.compute_loss(student, dict(batch)).item()

    def routed(b, models, batch):
        return models[int(batch["teacher_index"][b])](
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits

    assert loss == pytest.approx(_manual_kd(student, teachers, batch, routed), rel=1e-5)
    # and not what either teacher alone gives
    for i in (0, 1):
        alone = _manual_kd(
            student,
            teachers,
            batch,
            lambda b, m, x, i=i: m[i](input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits,
        )
        assert loss != pytest.approx(alone, rel=1e-3)
    logged = trainer._named_logs(trainer._metrics["eval"], "eval_")
    assert set(logged) == {"eval_kd_loss/a", "eval_kd_loss/b", "eval_agreement/a", "eval_agreement/b"}


def test_mixture_is_the_weighted_mixture_of_tempered_distributions(tmp_path, char_tokenizer):
    teachers = [tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=s) for s in (1, 5)]
    student = tiny_llama(len(char_tokenizer), seed=2)
    args = make_args(tmp_path, teachers=[{"path": "a", "weight": 1.0}, {"path": "b", "weight": 3.0}], temperature=2.0)
    ds = routed_dataset(char_tokenizer)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=args, train_dataset=ds, processing_class=char_tokenizer
    )
    batch = trainer.data_collator([ds[i] for i in range(4)])
    mask, _ = targets(batch, "causal_lm")
    student.eval()
    loss = trainer.compute_loss(student, dict(batch)).item()
    with torch.no_grad():
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        p = 0.25 * torch.softmax(teachers[0](**inputs).logits / 2, -1) + 0.75 * torch.softmax(
            teachers[1](**inputs).logits / 2, -1
        )
        log_q = torch.log_softmax(student(**inputs).logits / 2, -1)
        kl = (p * (p.log() - log_q)).sum(-1)
        expected = 4.0 * kl[mask].sum().item() / mask.sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_teacher_specs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="teachers\\[1\\].weight"):
        make_args(tmp_path, teachers=["a", {"path": "b", "weight": -1}])
    with pytest.raises(ValueError, match="same name twice"):
        make_args(tmp_path, teachers=["x/a", "y/a"])
    with pytest.raises(ValueError, match="use multi_teacher='sum'"):
        make_args(tmp_path, teachers=[{"logits_path": "store"}, "b"])
    with pytest.raises(ValueError, match="teacher_column='t' routes rows"):
        make_args(tmp_path, teacher_column="t", teacher_model_name_or_path="x")
    with pytest.raises(ValueError, match="keep one"):
        make_args(tmp_path, teachers=["a"], teacher_model_name_or_path="x")
    with pytest.raises(ValueError, match="names no teacher"):
        routed_dataset_with = Dataset.from_dict({"prompt": ["p"], "response": ["r"], "teacher": ["c"]})
        from llm_distill.data.teachers import teacher_indices

        teacher_indices(routed_dataset_with, "teacher", ["a", "b"])


def test_a_batch_without_rows_for_the_first_teacher_keeps_its_ce(tmp_path, char_tokenizer):
    teachers = [tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=s) for s in (1, 5)]
    student = tiny_llama(len(char_tokenizer), seed=2)
    args = make_args(tmp_path, teachers=["a", "b"], teacher_column="teacher", ce_weight=1.0, kd_weight=0.0)
    ds = routed_dataset(char_tokenizer)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=args, train_dataset=ds, processing_class=char_tokenizer
    )
    batch = trainer.data_collator([ds[i] for i in (1, 3, 5)])  # every row is teacher b's
    assert batch["teacher_index"].tolist() == [1, 1, 1]
    student.eval()
    loss = trainer.compute_loss(student, dict(batch)).item()
    mask, labels = targets(batch, "causal_lm")
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = torch.nn.functional.cross_entropy(logits[mask], labels[mask]).item()
    assert loss == pytest.approx(ce, rel=1e-5)
