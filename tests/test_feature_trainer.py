"""Hidden-state and attention distillation through the real Trainer: projections, resume, export, two stages."""

import json
import os

import pytest
import torch
import yaml
from conftest import make_bert_tokenizer, tiny_bert_classifier, tiny_llama
from datasets import Dataset
from safetensors.torch import load_file
from test_trainer import StopAt, flat_params, instruction_dataset, make_args
from transformers import AutoModelForSequenceClassification

from llm_distill import DistillationTrainer
from llm_distill.data import DistillationCollator
from llm_distill.export import PROJECTIONS_NAME
from llm_distill.features import StudentWithFeatures


class PadOnly:
    pad_token_id = 0


def classification_dataset(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "sample_id": list(range(n))}
    for _ in range(n):
        length = int(torch.randint(4, 13, (1,), generator=g))
        ids = torch.randint(5, 100, (length,), generator=g).tolist()
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(ids[0] % 2)
    return Dataset.from_dict(rows)


def feature_trainer(tmp_path, student, teacher, ds, callbacks=None, **kw):
    settings = dict(
        per_device_train_batch_size=8,
        max_steps=4,
        learning_rate=1e-2,
        kd_weight=0.0,
        hidden_weight=1.0,
        attention_weight=1.0,
        layer_map="uniform",
        save_strategy="steps",
        save_steps=2,
    )
    settings.update(kw)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **settings),
        train_dataset=ds,
        data_collator=DistillationCollator(PadOnly()),
        callbacks=callbacks,
    )


def test_projections_train_checkpoint_resume_and_stay_out_of_the_export(tmp_path):
    ds = classification_dataset()

    def run(out, stop_at=None, resume=None):
        teacher = tiny_bert_classifier(layers=4, hidden=48, heads=4, seed=1)
        student = tiny_bert_classifier(layers=2, hidden=32, heads=2, seed=2)  # other width and head count
        trainer = feature_trainer(out, student, teacher, ds, callbacks=[StopAt(stop_at)] if stop_at else None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    wrapper = full.model
    assert isinstance(wrapper, StudentWithFeatures)
    projection_params = {id(p) for p in wrapper.features.parameters()}
    assert projection_params, "widths differ, so there must be projections"
    in_optimizer = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    assert projection_params <= in_optimizer
    initial = StudentWithFeatures(tiny_bert_classifier(layers=2, hidden=32, heads=2, seed=2), full.features)
    logs = full.state.log_history
    assert {"hidden_loss", "attention_loss"} <= set(logs[0])

    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    saved = load_file(checkpoint / PROJECTIONS_NAME)
    assert set(saved) == {k.removeprefix("features.") for k in wrapper.state_dict() if k.startswith("features.")}
    final = load_file(tmp_path / "full" / "out" / "checkpoint-4" / PROJECTIONS_NAME)
    assert any(not torch.equal(saved[k], final[k]) for k in saved)  # projections changed during training
    del initial

    run(tmp_path / "resumed", stop_at=2)
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "out" / "checkpoint-2"))
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), atol=1e-6, rtol=1e-5)

    export = tmp_path / "export"
    full.save_model(str(export))
    assert not os.path.exists(export / PROJECTIONS_NAME)
    exported = load_file(export / "model.safetensors")
    assert not any("projection" in k or k.startswith(("features.", "student.")) for k in exported)
    reloaded = AutoModelForSequenceClassification.from_pretrained(export)
    torch.testing.assert_close(flat_params(reloaded), flat_params(full.student))


def test_feature_losses_are_zero_for_an_exact_copy(tmp_path):
    teacher = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=1)
    student = tiny_bert_classifier(layers=2, hidden=32, heads=4, seed=1)
    trainer = feature_trainer(tmp_path, student, teacher, classification_dataset(8), max_steps=1)
    metrics = trainer.evaluate(classification_dataset(8))
    assert metrics["eval_hidden_loss"] < 1e-10 and metrics["eval_attention_loss"] < 1e-10


def test_feature_distillation_gradient_accumulation_equivalence(tmp_path, char_tokenizer):
    ds = instruction_dataset(char_tokenizer, n=8)
    results = []
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
            hidden_weight=1.0,
            attention_weight=1.0,
            ce_weight=0.3,
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=char_tokenizer
        )
        trainer.train()
        results.append(flat_params(trainer.model))
    torch.testing.assert_close(results[1], results[0], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("width", [48, 32])
def test_two_stage_tinybert_recipe_runs_from_the_cli(tmp_path, monkeypatch, width):
    """Both TinyBERT stages, one command: stage 2 starts from the stage-1 student and exports a plain model."""

    from llm_distill.cli import main

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["good", "bad"]
    tokenizer = make_bert_tokenizer(vocab)
    teacher = tiny_bert_classifier(vocab_size=len(vocab), layers=4, hidden=48, heads=4, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps({"sentence": s, "label": i % 2}) + "\n"
            for i, s in enumerate(["good", "bad", "a b c good", "bad x y", "good good"] * 4)
        )
    )
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "student": {
            "from_teacher": {"num_layers": 2, "hidden_size": width, "num_attention_heads": 4, "intermediate_size": 64}
        },
        "dataset": {"path": str(data), "task": "classification", "text_column": "sentence", "max_length": 16},
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "logging_steps": 1,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "stages": [
            {"name": "s1", "kd_weight": 0.0, "hidden_weight": 1.0, "attention_weight": 1.0},
            {"name": "s2", "kd_weight": 1.0},
        ],
    }
    path = tmp_path / "tinybert.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    stage1 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "s1")
    stage2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "s2")
    assert stage1.config.num_hidden_layers == 2 and stage2.config.hidden_size == width
    assert not torch.equal(flat_params(stage1), flat_params(stage2))
    state = json.loads((tmp_path / "run" / "s1" / "trainer_state.json").read_text())
    assert any("hidden_loss" in e and "attention_loss" in e for e in state["log_history"])
