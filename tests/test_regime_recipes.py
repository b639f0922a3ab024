"""Every teaching regime runs from a recipe through the CLI: several routed teachers, born-again generations,
mutual learning and a co-trained teacher (tiny BERT classifiers)."""

import json

import pytest
import torch
import yaml
from conftest import make_bert_tokenizer, tiny_bert_classifier
from test_trainer import flat_params
from transformers import AutoModelForSequenceClassification

from llm_distill.cli import main

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["good", "bad"]


@pytest.fixture
def workspace(tmp_path):
    """Two tiny teachers, a pretrained-like start for the students, and labelled rows with a teacher column."""
    tokenizer = make_bert_tokenizer(VOCAB)
    for name, seed, layers in (("teacher_a", 1, 4), ("teacher_b", 5, 4), ("start", 9, 2)):
        tiny_bert_classifier(vocab_size=len(VOCAB), layers=layers, hidden=32, seed=seed).save_pretrained(
            tmp_path / name
        )
        tokenizer.save_pretrained(tmp_path / name)
    rows = ["good", "bad", "a b c good", "bad x y", "good good"] * 4
    (tmp_path / "train.jsonl").write_text(
        "".join(
            json.dumps({"sentence": s, "label": i % 2, "source": "teacher_a" if i % 3 else "teacher_b"}) + "\n"
            for i, s in enumerate(rows)
        )
    )
    return tmp_path


def recipe(tmp, name, **extra):
    base = {
        "output_dir": str(tmp / name),
        "student": {"from_teacher": {"num_layers": 2, "init_from": str(tmp / "start")}},
        "dataset": {
            "path": str(tmp / "train.jsonl"),
            "eval_path": str(tmp / "train.jsonl"),
            "task": "classification",
            "text_column": "sentence",
            "max_length": 16,
        },
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "ce_weight": 0.5,
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def logs(folder):
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def test_routed_teachers_from_a_recipe(workspace):
    teachers = [str(workspace / "teacher_a"), str(workspace / "teacher_b")]
    path = recipe(workspace, "routed", teachers=teachers, teacher_column="source")
    assert main(["train", path]) == 0
    first = logs(workspace / "routed")[0]
    assert {"kd_loss/teacher_a", "kd_loss/teacher_b", "agreement/teacher_a"} <= set(first)
    meta = json.loads((workspace / "routed" / "distillation.json").read_text())
    assert meta["multi_teacher"] == "routed" and [t["name"] for t in meta["teachers"]] == ["teacher_a", "teacher_b"]


def test_born_again_generations_each_teach_the_next(workspace):
    path = recipe(workspace, "ban", teacher_model_name_or_path=str(workspace / "teacher_a"), generations=2)
    assert main(["train", path]) == 0
    report = json.loads((workspace / "ban" / "generations.json").read_text())
    assert [g["generation"] for g in report["generations"]] == [1, 2]
    assert report["generations"][1]["teacher"] == str(workspace / "ban" / "gen1")
    assert "eval_kd_loss" in report["generations"][1]["eval"]
    meta = json.loads((workspace / "ban" / "gen2" / "distillation.json").read_text())
    assert meta["teacher"] == str(workspace / "ban" / "gen1")
    gen1 = AutoModelForSequenceClassification.from_pretrained(workspace / "ban" / "gen1")
    gen2 = AutoModelForSequenceClassification.from_pretrained(workspace / "ban" / "gen2")
    assert gen1.config.num_hidden_layers == gen2.config.num_hidden_layers == 2
    assert not torch.equal(flat_params(gen1), flat_params(gen2))
    assert main(["train", path]) == 0  # finished generations are not trained again
    assert json.loads((workspace / "ban" / "generations.json").read_text()) == report


@pytest.mark.parametrize("mode", ["mutual", "co_train"])
def test_online_recipes_export_every_model(workspace, mode):
    extra = {"online_distillation": mode, "kd_weight": 1.0}
    if mode == "co_train":
        extra["teacher_model_name_or_path"] = str(workspace / "teacher_a")
    path = recipe(workspace, mode, **extra)
    assert main(["train", path]) == 0
    other = "student_1" if mode == "mutual" else "teacher"
    primary = AutoModelForSequenceClassification.from_pretrained(workspace / mode)
    second = AutoModelForSequenceClassification.from_pretrained(workspace / mode / other)
    assert not torch.equal(flat_params(primary)[:100], flat_params(second)[:100]) or mode == "co_train"
    assert f"ce_loss/{other}" in logs(workspace / mode)[0]
    if mode == "co_train":
        teacher = AutoModelForSequenceClassification.from_pretrained(workspace / "teacher_a")
        assert not torch.equal(flat_params(teacher), flat_params(second))  # the teacher was trained too
        assert second.config.num_hidden_layers == 4
