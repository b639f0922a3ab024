"""The student as its own teacher: EMA (decay 1 = frozen initial copy, decay 0 = current student), live weights,
a LoRA base with adapters disabled, checkpoints that carry the EMA, and the context teacher's re-indexing."""

import copy
import os

import pytest
import torch
from conftest import tiny_llama
from datasets import Dataset
from test_trainer import PROMPTS, RESPONSES, StopAt, flat_params, instruction_dataset, make_args
from transformers import TrainerCallback

from llm_distill import DistillationTrainer
from llm_distill.data import DataConfig, tokenize_instruction, with_sample_ids
from llm_distill.data.teachers import add_teacher_columns
from llm_distill.export import TEACHER_STATE_NAME
from llm_distill.student import apply_lora

SGD = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, ce_weight=0.5)


class RecordStudent(TrainerCallback):
    """The student's weights after every optimizer step (before the teacher's update sees them)."""

    def __init__(self):
        self.history = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.history.append(flat_params(model))


def run(tmp_path, tokenizer, teacher_model=None, steps=3, callbacks=None, resume=None, student=None, ds=None, **kw):
    student = student if student is not None else tiny_llama(len(tokenizer), seed=2)
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=steps, **{**SGD, **kw})
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher_model,
        args=args,
        train_dataset=ds if ds is not None else instruction_dataset(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_ema_with_decay_1_is_a_frozen_copy_of_the_initial_student(tmp_path, char_tokenizer):
    frozen = run(tmp_path / "copy", char_tokenizer, teacher_model=tiny_llama(len(char_tokenizer), seed=2))
    ema = run(tmp_path / "ema", char_tokenizer, self_teacher="ema", ema_decay=1.0)
    torch.testing.assert_close(flat_params(ema.model), flat_params(frozen.model), atol=0, rtol=0)
    torch.testing.assert_close(flat_params(ema.teacher.model), flat_params(tiny_llama(len(char_tokenizer), seed=2)))
    assert ema.state.log_history[0]["kd_loss"] == 0.0  # the teacher is the student at step 0
    assert ema.state.log_history[1]["kd_loss"] > 0.0  # then the student moves away from its frozen copy
    same = run(tmp_path / "frozen", char_tokenizer, self_teacher="frozen")
    torch.testing.assert_close(flat_params(same.model), flat_params(frozen.model), atol=0, rtol=0)


def test_ema_with_decay_0_is_the_current_student(tmp_path, char_tokenizer):
    ema = run(tmp_path / "ema", char_tokenizer, self_teacher="ema", ema_decay=0.0)
    live = run(tmp_path / "live", char_tokenizer, self_teacher="live")
    assert all(e["kd_loss"] == 0.0 for e in ema.state.log_history if "kd_loss" in e)
    torch.testing.assert_close(flat_params(ema.teacher.model), flat_params(ema.model), atol=0, rtol=0)
    torch.testing.assert_close(flat_params(ema.model), flat_params(live.model), atol=0, rtol=0)
    assert live.teacher.model is live.model  # no copy
    assert all(p.requires_grad for p in live.model.parameters())  # the live teacher froze nothing


def test_ema_follows_the_student_after_each_optimizer_step(tmp_path, char_tokenizer):
    record = RecordStudent()
    ema = run(tmp_path, char_tokenizer, self_teacher="ema", ema_decay=0.5, callbacks=[record])
    expected = flat_params(tiny_llama(len(char_tokenizer), seed=2))
    for student in record.history:
        expected = 0.5 * expected + 0.5 * student
    torch.testing.assert_close(flat_params(ema.teacher.model), expected, atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in ema.teacher.model.parameters())


def test_ema_resume_reproduces_the_uninterrupted_run(tmp_path, char_tokenizer):
    kw = dict(self_teacher="ema", ema_decay=0.5, steps=4, save_strategy="steps", save_steps=2)
    full = run(tmp_path / "full", char_tokenizer, **kw)
    run(tmp_path / "cut", char_tokenizer, callbacks=[StopAt(2)], **kw)
    checkpoint = tmp_path / "cut" / "out" / "checkpoint-2"
    assert os.path.exists(checkpoint / TEACHER_STATE_NAME)
    assert not os.path.exists(tmp_path / "cut" / "out" / TEACHER_STATE_NAME)  # exports carry the student only
    # The resumed run starts from another student init: the checkpoint, not the start, must give both weights.
    resumed = run(
        tmp_path / "cut", char_tokenizer, resume=str(checkpoint), student=tiny_llama(len(char_tokenizer), seed=9), **kw
    )
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        flat_params(resumed.teacher.model), flat_params(full.teacher.model), atol=1e-6, rtol=1e-5
    )


def test_lora_base_teacher_is_the_student_with_adapters_disabled(tmp_path, char_tokenizer):
    base = tiny_llama(len(char_tokenizer), seed=2)
    reference = copy.deepcopy(base)
    student = apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainer = run(tmp_path, char_tokenizer, student=student, self_teacher="lora_base", learning_rate=0.05)
    assert trainer.teacher.model is student  # no second copy in memory
    assert trainer.state.log_history[0]["kd_loss"] == 0.0  # LoRA starts as the identity
    assert trainer.state.log_history[2]["kd_loss"] > 0.0
    batch = trainer.data_collator([instruction_dataset(char_tokenizer)[i] for i in range(4)])
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    student.train()
    targets = trainer.teacher(batch).logits
    assert student.training  # its mode is given back
    with torch.no_grad():
        torch.testing.assert_close(targets, reference(**inputs).logits, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(student(**inputs).logits, targets, atol=1e-4)  # adapters back on


def context_dataset(tokenizer, template, n=16):
    raw = Dataset.from_dict({"prompt": (PROMPTS * 4)[:n], "response": (RESPONSES * 4)[:n], "hint": ["be brief"] * n})
    cfg = DataConfig(path="x.json", task="instruction")
    encoded = tokenize_instruction(raw, tokenizer, cfg)
    return with_sample_ids(add_teacher_columns(encoded, raw, tokenizer, cfg, teacher_prompt=template))


def test_context_teacher_with_no_extra_context_equals_a_self_copy(tmp_path, char_tokenizer):
    ds = context_dataset(char_tokenizer, "{prompt}")
    trainer = run(tmp_path, char_tokenizer, ds=ds, steps=1, self_teacher="frozen", teacher_prompt="{prompt}")
    assert trainer.state.log_history[0]["kd_loss"] == 0.0


@pytest.mark.parametrize("template", ["Hint: {hint}. {prompt}", "{prompt}\nReference answer:{response}\n"])
def test_context_teacher_scores_the_same_completion_after_its_own_prompt(tmp_path, char_tokenizer, template):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    ds = context_dataset(char_tokenizer, template)
    args = make_args(tmp_path, teacher_prompt=template)
    trainer = DistillationTrainer(
        model=tiny_llama(len(char_tokenizer), seed=2),
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        processing_class=char_tokenizer,
    )
    rows = [ds[i] for i in range(5)]
    batch = trainer.data_collator(rows)
    out = trainer.teacher(batch).logits
    from llm_distill.tasks import targets

    mask, _ = targets(batch, "causal_lm")
    for b, row in enumerate(rows):
        start = next(i for i, label in enumerate(row["labels"]) if label != -100)
        sequence = list(row["teacher_prompt_ids"]) + list(row["input_ids"][start:])
        with torch.no_grad():
            alone = teacher(input_ids=torch.tensor([sequence])).logits[0]
        shift = len(row["teacher_prompt_ids"]) - start
        for t in mask[b].nonzero().squeeze(-1).tolist():
            torch.testing.assert_close(out[b, t], alone[t + shift], atol=1e-5, rtol=1e-4)
    # the teacher's prompt is longer than the student's: the shift is not trivial
    assert len(rows[0]["teacher_prompt_ids"]) > len(char_tokenizer(PROMPTS[0])["input_ids"])


def test_self_teacher_settings_are_refused_when_impossible(tmp_path, char_tokenizer):
    with pytest.raises(ValueError, match="self_teacher='nope'"):
        make_args(tmp_path, self_teacher="nope")
    with pytest.raises(ValueError, match="ema_decay=1.5"):
        make_args(tmp_path, self_teacher="ema", ema_decay=1.5)
    with pytest.raises(ValueError, match="keep one"):
        make_args(tmp_path, self_teacher="ema", teacher_model_name_or_path="x")
    with pytest.raises(ValueError, match="needs a LoRA"):
        run(tmp_path, char_tokenizer, self_teacher="lora_base", steps=1)
    with pytest.raises(ValueError, match="teacher_prompt names \\['answer'\\]"):
        context_dataset(char_tokenizer, "{prompt} {answer}")
