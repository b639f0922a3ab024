"""On-policy distillation with the real SmolLM2-135M-Instruct teacher on GSM8K prompts (slow: `make test-slow`)."""

import os

import pytest

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.data import DataConfig, build_datasets
from llm_distill.student import student_from_teacher

pytestmark = pytest.mark.slow
ROOT = os.path.join(os.path.dirname(__file__), "..")
GSM8K = os.path.join(ROOT, "..", "shared", "data", "gsm8k", "train.jsonl")


def test_gsm8k_prompts_render_with_the_chat_template_and_a_student_trains_on_its_own_samples(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(ROOT, "assets", "smollm2-135m")
    if not os.path.exists(os.path.join(path, "config.json")):
        pytest.skip("llm-distill fetch-teacher smollm2 --output assets/smollm2-135m first")
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = DataConfig(path=GSM8K, task="prompt_completion", prompt_column="question", response_column="answer",
                     max_samples=4)  # fmt: skip
    train, _ = build_datasets(cfg, tokenizer)
    row = train[0]
    prompt = tokenizer.decode(row["input_ids"][: row["prompt_length"]])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert row["input_ids"][-1] == tokenizer.eos_token_id == row["labels"][-1]  # <|im_end|> ends the answer

    teacher = AutoModelForCausalLM.from_pretrained(path)
    args = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1, per_device_train_batch_size=2,
        logging_steps=1, save_strategy="no", lmbda=1.0, max_new_tokens=8, kd_loss="reverse_kl", loss_chunk_size=64,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student_from_teacher(teacher, num_layers=4), teacher_model=teacher, args=args,
        train_dataset=train, processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["onpolicy_fraction"] == 1.0 and 1 <= log["completion_length"] <= 8
    assert log["sample_reverse_kl"] == pytest.approx(log["kd_loss"], rel=1e-6) and log["sample_reverse_kl"] > 0
