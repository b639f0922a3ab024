"""On-policy steps in DistillationTrainer: lmbda=0 is the off-policy run, only completion tokens count, normalisation
and resume hold on generated completions, generation sees the current weights, a logit store is refused."""

import copy
import json
import os

import pytest
import torch
from conftest import tiny_llama
from test_onpolicy_generation import favour
from test_trainer import StopAt, flat_params, instruction_dataset, make_args

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.onpolicy import SOURCE_KEY, TransformersBackend, on_policy_step
from llm_distill.tasks import targets

STEP = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, kd_loss="reverse_kl")


def make_trainer(tmp_path, tok, *, teacher=None, student=None, n=8, callbacks=None, **kw):
    teacher = teacher if teacher is not None else tiny_llama(len(tok), layers=3, hidden=48, seed=1)
    student = student if student is not None else tiny_llama(len(tok), seed=2)
    settings = {"per_device_train_batch_size": 4, "max_steps": 2, "max_new_tokens": 6, **STEP, **kw}
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, **settings),
        train_dataset=instruction_dataset(tok, n=n),
        processing_class=tok,
        callbacks=callbacks,
    )


def first_window(trainer, num_batches=1):
    """What the training loop's first optimizer step trains on (the same call Trainer makes)."""
    iterator = iter(trainer.get_train_dataloader())
    return trainer.get_batch_samples(iterator, num_batches, trainer.args.device)


def test_lmbda_0_is_exactly_the_off_policy_run(tmp_path, char_tokenizer):
    runs = {}
    for name, extra in {
        "plain": {},
        "lmbda0": dict(lmbda=0.0, max_new_tokens=3, generation_temperature=0.7, top_k=5),
        # The generation machinery is on but no step is drawn: it must not touch the run (RNG, data, counts).
        "never_drawn": dict(lmbda=1e-12),
        "on_policy": dict(lmbda=1.0),
    }.items():
        trainer = make_trainer(tmp_path / name, char_tokenizer, ce_weight=0.5, **extra)
        trainer.train()
        runs[name] = (trainer, flat_params(trainer.model))
    assert runs["lmbda0"][0].onpolicy is None and runs["never_drawn"][0].onpolicy is not None
    assert torch.equal(runs["lmbda0"][1], runs["plain"][1])
    assert torch.equal(runs["never_drawn"][1], runs["plain"][1])
    assert runs["never_drawn"][0].state.log_history[0]["onpolicy_fraction"] == 0.0
    assert not torch.allclose(runs["on_policy"][1], runs["plain"][1])
    assert runs["on_policy"][0].state.log_history[0]["onpolicy_fraction"] == 1.0


@pytest.mark.parametrize("kd_loss", ["reverse_kl", "jsd"])
def test_a_student_identical_to_the_teacher_has_zero_loss_on_its_own_samples(tmp_path, char_tokenizer, kd_loss):
    teacher = tiny_llama(len(char_tokenizer), seed=2)
    student = copy.deepcopy(teacher)
    trainer = make_trainer(tmp_path, char_tokenizer, teacher=teacher, student=student, lmbda=1.0, kd_loss=kd_loss)
    trainer.train()
    for log in trainer.state.log_history[:2]:
        assert log["kd_loss"] == pytest.approx(0.0, abs=1e-7)
        assert log["sample_reverse_kl"] == pytest.approx(0.0, abs=1e-7)
        assert log["completion_length"] > 0 and 0 < log["generation_time_share"] < 1
    torch.testing.assert_close(flat_params(student), flat_params(teacher), atol=1e-6, rtol=0)


def test_only_completion_tokens_count_in_a_generated_window(tmp_path, char_tokenizer):
    trainer = make_trainer(tmp_path, char_tokenizer, lmbda=1.0, ce_weight=1.0)
    dataset_batch = next(iter(trainer.get_train_dataloader()))
    (batch,), counts = first_window(trainer)
    assert batch[SOURCE_KEY] == "student"
    mask, labels = targets(batch, "causal_lm")
    assert int(counts["kd_tokens"]) == int(mask.sum())
    for row in range(batch["input_ids"].shape[0]):
        p = int(batch["prompt_length"][row])
        n = int(batch["attention_mask"][row].sum())
        assert 1 <= n - p <= 6  # max_new_tokens
        # The prompts are the dataset's, and the counted positions are exactly the completion's (logits at t
        # predict t+1: from the last prompt token to the one before the last completion token).
        real = dataset_batch["input_ids"][row][dataset_batch["attention_mask"][row].bool()]
        first_label = int((dataset_batch["labels"][row] != -100).nonzero()[0])
        assert batch["input_ids"][row, :p].tolist() == real[:first_label].tolist()
        assert mask[row].nonzero().flatten().tolist() == list(range(p - 1, n - 1))
        assert labels[row, p - 1 : n - 1].tolist() == batch["input_ids"][row, p:n].tolist()

    # Changing the student's last hidden states at prompt and padding positions leaves the loss unchanged. (The
    # hook sits before the head so that it reaches the fused loss too, which never materialises the logits.)
    perturb = {"where": None}

    def hook(module, args, output):
        if perturb["where"] is not None:
            output = output.clone()
            output[perturb["where"]] += 7.0 * torch.randn_like(output[perturb["where"]])
        return output

    student = trainer.model
    student.model.norm.register_forward_hook(hook)
    student.eval()
    inputs = {k: v for k, v in batch.items() if k != SOURCE_KEY}
    base = trainer.compute_loss(student, dict(inputs)).item()
    perturb["where"] = ~mask
    assert trainer.compute_loss(student, dict(inputs)).item() == pytest.approx(base, rel=1e-6)
    perturb["where"] = mask
    assert trainer.compute_loss(student, dict(inputs)).item() != pytest.approx(base, rel=1e-3)


def test_tokens_after_eos_never_count(tmp_path, char_tokenizer):
    eos = char_tokenizer.eos_token_id
    trainer = make_trainer(tmp_path, char_tokenizer, lmbda=1.0)
    generate = trainer.student.generate

    def keeps_writing_after_eos(*args, **kwargs):
        # An engine that writes on after EOS (as batched generation pads finished rows): row 0 ends at its third
        # new token, then junk follows.
        out = generate(*args, **kwargs).clone()
        start = kwargs["input_ids"].shape[1]
        out[0, start + 2] = eos
        out[0, start + 3 :] = char_tokenizer.convert_tokens_to_ids("j")
        return out

    trainer.student.generate = keeps_writing_after_eos
    (batch,), counts = first_window(trainer)
    p = int(batch["prompt_length"][0])
    assert int(batch["attention_mask"][0].sum()) == p + 3 and batch["input_ids"][0, p + 2] == eos
    mask, labels = targets(batch, "causal_lm")
    assert int(mask[0].sum()) == 3 and labels[0, p + 1] == eos

    # End to end: a student that always says EOS gives one counted token per row, and trains on it.
    student = tiny_llama(len(char_tokenizer), seed=2)
    student.lm_head.register_forward_hook(favour(eos))
    trainer = make_trainer(tmp_path / "eos", char_tokenizer, student=student, lmbda=1.0)
    (batch,), counts = first_window(trainer)
    assert int(counts["kd_tokens"]) == 4 and trainer.onpolicy.logs(lambda t: t, "cpu")["completion_length"] == 1.0


def test_generated_windows_do_not_depend_on_batching_or_accumulation(tmp_path, char_tokenizer):
    """Batch 4 x accumulation 1 (left-padded prompts of different lengths), 2 x 2 and 1 x 4 (each row alone) sample
    the same completions and take the same step: per-row seeds, and the window count spans the accumulation."""
    results = []
    for bs, ga in [(4, 1), (2, 2), (1, 4)]:
        trainer = make_trainer(
            tmp_path / f"{bs}x{ga}",
            char_tokenizer,
            lmbda=1.0,
            ce_weight=0.5,
            max_steps=1,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            generation_temperature=1.2,
        )
        window, counts = first_window(trainer, ga)
        rows = [ids[m.bool()].tolist() for b in window for ids, m in zip(b["input_ids"], b["attention_mask"])]
        trainer.train()
        results.append((rows, int(counts["kd_tokens"]), flat_params(trainer.model)))
    rows, count, weights = results[0]
    for other_rows, other_count, other_weights in results[1:]:
        assert other_rows == rows and other_count == count
        torch.testing.assert_close(other_weights, weights, atol=2e-6, rtol=1e-5)


def test_generation_uses_the_current_weights_in_eval_mode(tmp_path, char_tokenizer):
    seen = []
    original = TransformersBackend.generate

    def spy(self, model, prompts, seeds, settings):
        modes = []
        handle = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        out = original(self, model, prompts, seeds, settings)
        handle.remove()
        seen.append((copy.deepcopy(model.state_dict()), set(modes), model.training))
        return out

    TransformersBackend.generate = spy
    try:
        two = make_trainer(tmp_path / "two", char_tokenizer, lmbda=1.0, generation_temperature=0.0)
        initial = flat_params(two.model)
        two.train()
        one = make_trainer(tmp_path / "one", char_tokenizer, lmbda=1.0, generation_temperature=0.0, max_steps=1)
        one.train()
    finally:
        TransformersBackend.generate = original
    step0, step1 = seen[0], seen[1]
    flat = lambda state: torch.cat([v.flatten() for v in state.values()])  # noqa: E731
    assert torch.equal(flat(step0[0]), initial)
    # The second step generated with the weights after the first update, not the initial ones.
    assert torch.equal(flat(step1[0]), flat_params(one.model)) and not torch.equal(flat(step1[0]), initial)
    assert step0[1] == {False} and step0[2] is True  # decoded in eval mode, back in train mode afterwards


def test_resume_in_the_middle_reproduces_the_uninterrupted_run(tmp_path, char_tokenizer):
    sources = [on_policy_step(0, step, 0.5) for step in range(4)]
    assert True in sources and False in sources, "the run must mix both kinds of steps"
    common = dict(lmbda=0.5, max_steps=4, save_strategy="steps", save_steps=2, ce_weight=0.5, n=16)
    full = make_trainer(tmp_path / "full", char_tokenizer, **common)
    full.train()
    first = make_trainer(tmp_path / "resumed", char_tokenizer, callbacks=[StopAt(2)], **common)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    resumed = make_trainer(tmp_path / "resumed", char_tokenizer, **common)
    resumed.train(resume_from_checkpoint=checkpoint)
    torch.testing.assert_close(flat_params(resumed.model), flat_params(full.model), atol=1e-6, rtol=1e-5)
    fractions = [log["onpolicy_fraction"] for log in full.state.log_history if "onpolicy_fraction" in log]
    assert fractions == [float(s) for s in sources]
    resumed.save_model(str(tmp_path / "export"))
    meta = json.loads((tmp_path / "export" / "distillation.json").read_text())
    assert meta["generation"] == dict(
        lmbda=0.5, seq_kd=False, max_new_tokens=6, generation_temperature=1.0, top_p=1.0, top_k=0
    )
    assert "generated completions: lmbda 0.5" in (tmp_path / "export" / "README.md").read_text()


def test_seq_kd_on_the_fly_trains_on_the_teachers_completions(tmp_path, char_tokenizer):
    trainer = make_trainer(tmp_path, char_tokenizer, seq_kd=True, generation_temperature=0.0)
    (batch,), _ = first_window(trainer)
    assert batch[SOURCE_KEY] == "teacher"
    prompts = [batch["input_ids"][i, : int(n)].tolist() for i, n in enumerate(batch["prompt_length"])]
    teacher_says = trainer.onpolicy.backend.generate(
        trainer.teacher.model, prompts, [0] * 4, trainer.onpolicy.settings
    )
    for i, completion in enumerate(teacher_says):
        p = len(prompts[i])
        assert batch["input_ids"][i, p : p + len(completion)].tolist() == completion
    trainer.train()
    assert trainer.state.log_history[0]["seq_kd_fraction"] == 1.0
    assert "sample_reverse_kl" not in trainer.state.log_history[0]  # the teacher's samples are not the student's


def test_the_fused_loss_takes_the_same_on_policy_step(tmp_path, char_tokenizer):
    dense = make_trainer(tmp_path / "dense", char_tokenizer, lmbda=1.0, kd_loss="jsd", ce_weight=0.5)
    dense.train()
    fused = make_trainer(
        tmp_path / "fused", char_tokenizer, lmbda=1.0, kd_loss="jsd", ce_weight=0.5, loss_chunk_size=8
    )
    fused.train()
    torch.testing.assert_close(flat_params(fused.model), flat_params(dense.model), atol=2e-6, rtol=1e-5)
    for a, b in zip(dense.state.log_history[:2], fused.state.log_history[:2]):
        assert b["sample_reverse_kl"] == pytest.approx(a["sample_reverse_kl"], rel=1e-5)


@pytest.mark.parametrize("extra", [dict(lmbda=0.5), dict(seq_kd=True)])
def test_a_logit_store_is_refused_before_any_model_loads(tmp_path, extra, capsys):
    with pytest.raises(ValueError, match="needs a live teacher to score newly generated text"):
        DistillationConfig(output_dir=str(tmp_path), teacher_logits_path="store", **extra)
    from llm_distill.cli import main

    flags = [f"--{key}={value}" for key, value in extra.items()]
    assert main(["check", "--output_dir", str(tmp_path), "--teacher_logits_path", "store", *flags]) == 2
    assert "teacher_logits_path='store'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lmbda=1.5), "lmbda=1.5"),
        (dict(top_p=0.0), "top_p=0.0"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(generation_temperature=-0.5), "generation_temperature=-0.5"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(lmbda=1.0, task="sequence_classification"), "task=causal_lm"),
    ],
)
def test_generation_settings_are_checked(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(output_dir=str(tmp_path), **kwargs)


def test_an_off_policy_step_on_prompt_only_rows_is_reported(tmp_path, char_tokenizer, caplog):
    trainer = make_trainer(tmp_path, char_tokenizer, lmbda=1e-12)
    batch = next(iter(trainer.get_train_dataloader()))
    batch["labels"] = torch.full_like(batch["labels"], -100)  # prompts only
    with caplog.at_level("WARNING"):
        trainer.onpolicy.prepare_window([batch], step=0, student=trainer.student, teacher=None)
    assert "no completion tokens to learn from" in caplog.text
