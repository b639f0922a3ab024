"""The on-policy arm of benchmarks/onpolicy_gsm8k.py run with TRL's stable ``DistillationTrainer`` (trl package).

Same student start (``student_from_teacher`` with the same layers), same prompts (rendered by TRL with the same chat
template), same optimizer steps, batch, learning rate and schedule, reverse KL (``beta=1``), temperature 1 for both
sampling and the loss (TRL has one temperature for both), top-p 1, no top-k, the same completion budget. TRL shuffles
the prompts with its own sampler, so the order differs from ours; the set is the same.
"""

from __future__ import annotations

import json
import os


def run_trl(*, teacher_dir: str, out: str, questions: list[str], layers: int, steps: int, batch_size: int,
            max_new_tokens: int, learning_rate: float, seed: int) -> dict:  # fmt: skip
    """Train (unless ``out`` already holds a finished run) and return ``{"train_seconds", "steps", "log_history"}``."""
    state_path = os.path.join(out, "trainer_state.json")
    if not os.path.exists(state_path):
        _train(teacher_dir, out, questions, layers, steps, batch_size, max_new_tokens, learning_rate, seed)
    with open(state_path) as fh:
        history = json.load(fh)["log_history"]
    seconds = sum(e.get("train_runtime", 0.0) for e in history)
    return {"train_seconds": seconds, "steps": steps, "log_history": history}


def _train(teacher_dir, out, questions, layers, steps, batch_size, max_new_tokens, learning_rate, seed):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    from llm_distill.student import student_from_teacher

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, padding_side="left")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype="float32")
    student = student_from_teacher(teacher, num_layers=layers)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in questions])
    args = DistillationConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        seed=seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        beta=1.0,  # reverse KL
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_completion_length=max_new_tokens,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
    trainer.save_state()
