"""The trainer's fused chunked path equals its dense path: same logged losses, same weights after a few steps."""

import pytest
import torch
from conftest import tiny_llama
from test_trainer import flat_params, instruction_dataset, make_args

from llm_distill import DistillationTrainer
from llm_distill.student import apply_lora


def train(tmp_path, tokenizer, chunk, *, tied, kd_loss="forward_kl", **kw):
    teacher = tiny_llama(len(tokenizer) + 5, layers=3, hidden=48, seed=1)  # padded teacher vocabulary
    student = tiny_llama(len(tokenizer), seed=2, tie_word_embeddings=tied)
    args = make_args(
        tmp_path / f"c{chunk}",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=0.0,
        ce_weight=0.3,
        kd_loss=kd_loss,
        temperature=2.0,
        loss_chunk_size=chunk,
        eval_strategy="steps",
        eval_steps=2,
        **kw,
    )
    ds = instruction_dataset(tokenizer, n=16)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        eval_dataset=ds.select(range(8)),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize(("tied", "kd_loss"), [(True, "forward_kl"), (False, "jsd"), (False, "tvd")])
def test_fused_path_equals_dense_path(tmp_path, char_tokenizer, tied, kd_loss):
    dense = train(tmp_path, char_tokenizer, 0, tied=tied, kd_loss=kd_loss)
    fused = train(tmp_path, char_tokenizer, 7, tied=tied, kd_loss=kd_loss)  # 7 divides no token count here
    torch.testing.assert_close(flat_params(fused.model), flat_params(dense.model), atol=2e-5, rtol=1e-4)
    for a, b in zip(dense.state.log_history, fused.state.log_history):
        for key in ("loss", "kd_loss", "ce_loss", "eval_kd_loss", "eval_ce_loss", "eval_perplexity"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_lora_on_lm_head_is_refused_by_the_fused_path(tmp_path, char_tokenizer):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    student = apply_lora(
        tiny_llama(len(char_tokenizer), seed=2, tie_word_embeddings=False), r=2, target_modules=["q_proj", "lm_head"]
    )
    with pytest.raises(ValueError, match="LoRA or modules_to_save on lm_head"):
        DistillationTrainer(
            model=student,
            teacher_model=teacher,
            processing_class=char_tokenizer,
            args=make_args(tmp_path, loss_chunk_size=16),
        )
