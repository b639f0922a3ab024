"""Online distillation: mutual learning with divergence weight 0 equals independent CE training; peers teach each
other; every model is checkpointed, resumed and exported; a co-trained teacher learns while it teaches."""

import os

import pytest
import torch
from conftest import tiny_llama
from test_trainer import StopAt, flat_params, instruction_dataset, make_args
from transformers import AutoModelForCausalLM, Trainer

from llm_distill.data import DistillationCollator
from llm_distill.online import OnlineDistillationTrainer, co_training, mutual_learning

KW = dict(per_device_train_batch_size=4, learning_rate=0.05, lr_scheduler_type="linear", max_grad_norm=0.5)


def peers(tokenizer):
    return {"student_0": tiny_llama(len(tokenizer), seed=2), "student_1": tiny_llama(len(tokenizer), seed=3)}


def online(tmp_path, tokenizer, steps=3, callbacks=None, resume=None, models=None, learns_from=None, **kw):
    models = models or peers(tokenizer)
    args = make_args(tmp_path, max_steps=steps, online_distillation="mutual", **{**KW, **kw})
    trainer = OnlineDistillationTrainer(
        models,
        args,
        learns_from=learns_from or mutual_learning(list(models)),
        train_dataset=instruction_dataset(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_mutual_learning_with_divergence_weight_0_equals_independent_ce_training(tmp_path, char_tokenizer):
    cohort = online(tmp_path / "dml", char_tokenizer, kd_weight=0.0, ce_weight=1.0)
    for name, seed in (("student_0", 2), ("student_1", 3)):
        alone = tiny_llama(len(char_tokenizer), seed=seed)
        args = make_args(tmp_path / name, max_steps=3, **KW)
        Trainer(
            model=alone,
            args=args,
            train_dataset=instruction_dataset(char_tokenizer).remove_columns("sample_id"),
            data_collator=DistillationCollator(char_tokenizer),
        ).train()
        torch.testing.assert_close(flat_params(cohort.cohort.members[name]), flat_params(alone), atol=1e-6, rtol=1e-5)


def test_mutual_learning_moves_the_peers_towards_each_other(tmp_path, char_tokenizer):
    alone = online(tmp_path / "ce", char_tokenizer, kd_weight=0.0, ce_weight=1.0, steps=4, learning_rate=0.01)
    dml = online(tmp_path / "dml", char_tokenizer, kd_weight=1.0, ce_weight=1.0, steps=4, learning_rate=0.01)
    last = [e for e in dml.state.log_history if "kd_loss/student_0" in e][-1]
    base = [e for e in alone.state.log_history if "kd_loss/student_0" in e][-1]
    assert {"kd_loss/student_1", "ce_loss/student_0", "agreement/student_1"} <= set(last)
    assert last["kd_loss/student_0"] < base["kd_loss/student_0"]  # the divergence between the peers shrinks


def test_mutual_learning_resume_and_export(tmp_path, char_tokenizer):
    kw = dict(steps=4, save_strategy="steps", save_steps=2, kd_weight=1.0, ce_weight=1.0)
    full = online(tmp_path / "full", char_tokenizer, **kw)
    online(tmp_path / "cut", char_tokenizer, callbacks=[StopAt(2)], **kw)
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-2"
    assert os.path.exists(checkpoint / "student_1" / "model.safetensors")
    fresh = {
        "student_0": tiny_llama(len(char_tokenizer), seed=7),
        "student_1": tiny_llama(len(char_tokenizer), seed=8),
    }
    resumed = online(tmp_path / "cut", char_tokenizer, resume=str(checkpoint), models=fresh, **kw)
    for name in ("student_0", "student_1"):
        torch.testing.assert_close(
            flat_params(resumed.cohort.members[name]), flat_params(full.cohort.members[name]), atol=1e-6, rtol=1e-5
        )
    resumed.save_model(str(tmp_path / "export"))
    for name, folder in (("student_0", "export"), ("student_1", "export/student_1")):
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / folder)
        torch.testing.assert_close(flat_params(reloaded), flat_params(resumed.cohort.members[name]))


def test_co_trained_teacher_learns_from_its_labels_while_the_student_distils(tmp_path, char_tokenizer):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(char_tokenizer), seed=2)
    models = {"student": student, "teacher": teacher}
    trainer = online(tmp_path, char_tokenizer, models=models, learns_from=co_training(), kd_weight=1.0, ce_weight=0.0)
    logs = [e for e in trainer.state.log_history if "ce_loss/teacher" in e]
    assert logs and "agreement/teacher" not in logs[0] and logs[0]["kd_loss/teacher"] == 0.0
    # The teacher trained on CE alone, exactly as it would by itself (its gradients are its own, clipped alone).
    alone = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    Trainer(
        model=alone,
        args=make_args(tmp_path / "alone", max_steps=3, **KW),
        train_dataset=instruction_dataset(char_tokenizer).remove_columns("sample_id"),
        data_collator=DistillationCollator(char_tokenizer),
    ).train()
    torch.testing.assert_close(flat_params(teacher), flat_params(alone), atol=1e-6, rtol=1e-5)


def test_online_settings_are_refused_when_impossible(tmp_path):
    with pytest.raises(ValueError, match="online_distillation='peer'"):
        make_args(tmp_path, online_distillation="peer")
    with pytest.raises(ValueError, match="num_peers=1"):
        make_args(tmp_path, online_distillation="mutual", num_peers=1)
    with pytest.raises(ValueError, match="co_train"):
        make_args(tmp_path, online_distillation="co_train")
    with pytest.raises(ValueError, match="both set"):
        make_args(tmp_path, online_distillation="mutual", self_teacher="ema")
    for extra in (dict(lmbda=0.5), dict(seq_kd=True), dict(data_selection={"score": "teacher_nll", "keep": 0.5})):
        with pytest.raises(ValueError, match="unset lmbda / seq_kd and data_selection"):
            make_args(tmp_path, online_distillation="mutual", **extra)
