"""DistillationTrainer end to end on tiny models: normalisation, frozen teacher, masks, save/resume/reload."""

import json
import os

import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.data import DataConfig, tokenize_instruction, with_sample_ids

PROMPTS = [
    "Say hi:",
    "Count to three please:",
    "Q:",
    "Name a colour, any colour:",
    "x",
    "Tell me a fact:",
    "Why?",
    "Answer briefly:",
]
RESPONSES = [" hi", " one two three", " A", " blue", " yes, x it is", " water is wet", " because", " ok"]


def instruction_dataset(tokenizer, n=16):
    raw = Dataset.from_dict({"prompt": (PROMPTS * 4)[:n], "response": (RESPONSES * 4)[:n]})
    return with_sample_ids(tokenize_instruction(raw, tokenizer, DataConfig(path="x.json", task="instruction")))


def make_args(tmp_path, **kw):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        data_seed=0,
        dataloader_drop_last=False,
    )
    defaults.update(kw)
    return DistillationConfig(**defaults)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("chunk", ["auto", 0], ids=["fused", "dense"])
@pytest.mark.parametrize("kd_loss", ["forward_kl", "jsd"])
def test_gradient_accumulation_gives_the_same_update(tmp_path, char_tokenizer, kd_loss, chunk):
    """8 x 1 and 4 x 2 must give identical weights: normalisation is over the window's tokens."""
    ds = instruction_dataset(char_tokenizer, n=8)
    results = []
    for bs, ga in ((8, 1), (4, 2), (2, 4)):
        teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
        student = tiny_llama(len(char_tokenizer), seed=2)
        args = make_args(
            tmp_path / f"{bs}",
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            ce_weight=0.5,
            kd_loss=kd_loss,
            max_grad_norm=0.0,
            loss_chunk_size=chunk,
        )
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=char_tokenizer
        )
        trainer.train()
        results.append(flat_params(student))
    initial = flat_params(tiny_llama(len(char_tokenizer), seed=2))
    assert not torch.allclose(results[0], initial)  # the step did move the weights
    torch.testing.assert_close(results[1], results[0], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(results[2], results[0], atol=2e-6, rtol=1e-5)


def test_teacher_is_frozen_and_gets_no_grad(tmp_path, char_tokenizer):
    ds = instruction_dataset(char_tokenizer)
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    teacher.train()  # the trainer must switch it to eval
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_llama(len(char_tokenizer), seed=2)
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2)
    DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=char_tokenizer
    ).train()
    assert not teacher.training
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_loss_ignores_logits_at_masked_positions(tmp_path, char_tokenizer):
    """Prompt and padding positions are not targets: perturbing the student's logits there changes nothing."""
    ds = instruction_dataset(char_tokenizer, n=4)
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(char_tokenizer), seed=2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, ce_weight=1.0, loss_chunk_size=0),  # the full logits are what is perturbed
        train_dataset=ds,
        processing_class=char_tokenizer,
    )
    batch = trainer.data_collator([ds[i] for i in range(4)])
    from llm_distill.tasks import targets

    mask, _ = targets(batch, "causal_lm")
    perturb = {"on": False, "where": ~mask}

    def hook(module, args, output):
        if perturb["on"]:
            output.logits[perturb["where"]] += 7.0 * torch.randn_like(output.logits[perturb["where"]])
        return output

    student.register_forward_hook(hook)
    student.eval()
    base = trainer.compute_loss(student, dict(batch)).item()
    perturb["on"] = True
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(base, rel=1e-6)
    perturb["where"] = mask  # and the counted positions do matter
    assert trainer.compute_loss(student, dict(batch)).item() != pytest.approx(base, rel=1e-3)


class StopAt(TrainerCallback):
    """Simulates an interruption: the run stops after `step` optimizer steps (its checkpoint is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def _run_causal(tmp_path, tokenizer, max_steps, resume=None, save_steps=2, stop_at=None):
    ds = instruction_dataset(tokenizer)
    teacher = tiny_llama(len(tokenizer), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(tokenizer), seed=2)
    args = make_args(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=save_steps,
        learning_rate=1e-2,
        ce_weight=0.5,
        eval_strategy="steps",
        eval_steps=2,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        eval_dataset=ds.select(range(4)),
        processing_class=tokenizer,
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_causal_lm_train_checkpoint_resume_export_reload(tmp_path, char_tokenizer):
    full = _run_causal(tmp_path / "full", char_tokenizer, max_steps=4)
    logs = full.state.log_history
    assert {"kd_loss", "ce_loss", "agreement"} <= set(logs[0])
    evals = [e for e in logs if "eval_loss" in e]
    assert {"eval_kd_loss", "eval_ce_loss", "eval_perplexity", "eval_agreement"} <= set(evals[0])
    assert evals[0]["eval_perplexity"] == pytest.approx(2.718281828 ** evals[0]["eval_ce_loss"], rel=1e-5)

    first = _run_causal(tmp_path / "resumed", char_tokenizer, max_steps=4, stop_at=2)
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    assert os.path.isdir(checkpoint)
    resumed = _run_causal(tmp_path / "resumed", char_tokenizer, max_steps=4, resume=checkpoint)
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), atol=1e-6, rtol=1e-5)

    export = tmp_path / "export"
    resumed.save_model(str(export))
    files = set(os.listdir(export))
    assert {"model.safetensors", "config.json", "distillation.json", "README.md", "tokenizer.json"} <= files
    meta = json.loads((export / "distillation.json").read_text())
    assert meta["kd_loss"] == "forward_kl" and meta["weights"]["ce"] == 0.5 and meta["task"] == "causal_lm"
    reloaded = AutoModelForCausalLM.from_pretrained(export)
    assert reloaded.config.num_hidden_layers == 2  # the student, not the teacher
    torch.testing.assert_close(flat_params(reloaded), flat_params(resumed.model))


def test_bert_classifier_distils_and_reloads(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (24, 12))
    lengths = torch.randint(4, 13, (24,))
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "sample_id": list(range(24))}
    for i in range(24):
        n = int(lengths[i])
        rows["input_ids"].append(ids[i, :n].tolist())
        rows["attention_mask"].append([1] * n)
        rows["labels"].append(int(ids[i, 0] % 2))
    ds = Dataset.from_dict(rows)
    teacher = tiny_bert_classifier(layers=3, hidden=48, seed=1)
    with torch.no_grad():
        teacher.classifier.weight.mul_(50.0)  # a confident teacher, so there is something to learn
    student = tiny_bert_classifier(seed=2)

    class PadOnly:  # a tokenizer stand-in for the collator: only the pad id is needed
        pad_token_id = 0

    from llm_distill.data import DistillationCollator

    args = make_args(
        tmp_path,
        per_device_train_batch_size=8,
        max_steps=12,
        learning_rate=1e-2,
        temperature=2.0,
        eval_strategy="steps",
        eval_steps=3,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        eval_dataset=ds,
        data_collator=DistillationCollator(PadOnly()),
    )
    assert trainer.task == "sequence_classification"
    before = trainer.evaluate()["eval_kd_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_kd_loss"] < 0.8 * before
    trainer.save_model(tmp_path / "export")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    torch.testing.assert_close(flat_params(reloaded), flat_params(student))


def test_mismatched_tokenizers_are_refused(tmp_path, char_tokenizer):
    from conftest import make_char_tokenizer, make_swapped_char_tokenizer

    bigger = make_char_tokenizer()
    bigger.add_tokens(["<extra>"])
    teacher = tiny_llama(len(char_tokenizer), seed=1)
    student = tiny_llama(len(char_tokenizer), seed=2)
    for teacher_tokenizer, named in (
        (bigger, "'<extra>': teacher id"),
        (make_swapped_char_tokenizer(), "'a': teacher id"),
    ):
        with pytest.raises(ValueError, match=named):
            DistillationTrainer(
                model=student,
                teacher_model=teacher,
                args=make_args(tmp_path),
                processing_class=char_tokenizer,
                teacher_processing_class=teacher_tokenizer,
            )


def test_padded_vocabularies_are_distilled_over_the_real_tokens(tmp_path, char_tokenizer):
    n = len(char_tokenizer)
    teacher = tiny_llama(n + 24, layers=3, hidden=48, seed=1)  # embedding padded to a round size
    student = tiny_llama(n + 8, seed=2)
    ds = instruction_dataset(char_tokenizer, n=8)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=ds,
        processing_class=char_tokenizer,
    )
    assert trainer.kd_vocab_size == n
    trainer.train()
    too_small = tiny_llama(n - 1, seed=3)
    with pytest.raises(ValueError, match="tokenizer has"):
        DistillationTrainer(
            model=too_small, teacher_model=teacher, args=make_args(tmp_path), processing_class=char_tokenizer
        )
