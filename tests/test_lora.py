"""LoRA students: train through the trainer, save adapters, merge; the merged model equals the adapter model."""

import os

import torch
from conftest import tiny_llama
from test_trainer import instruction_dataset, make_args
from transformers import AutoModelForCausalLM

from llm_distill import DistillationTrainer
from llm_distill.student import apply_lora, save_merged


def test_lora_student_trains_saves_adapters_and_merges(tmp_path, char_tokenizer):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    base = tiny_llama(len(char_tokenizer), seed=2)
    student = apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    lora_before = {n: p.clone() for n, p in student.named_parameters() if "lora_B" in n}
    frozen_before = {n: p.clone() for n, p in student.named_parameters() if not p.requires_grad}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        processing_class=char_tokenizer,
        train_dataset=instruction_dataset(char_tokenizer),
        args=make_args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=5e-2),
    )
    trainer.train()
    params = dict(student.named_parameters())
    assert any(not torch.equal(params[n], v) for n, v in lora_before.items())  # adapters learned
    assert all(torch.equal(params[n], v) for n, v in frozen_before.items())  # base weights did not move

    trainer.save_model(str(tmp_path / "adapter"))
    assert os.path.exists(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not os.path.exists(tmp_path / "adapter" / "model.safetensors")
    save_merged(trainer, str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    ids = torch.randint(5, len(char_tokenizer), (2, 9))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, student(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
