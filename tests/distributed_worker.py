"""Run by tests/test_distributed.py, once in one process and once under torchrun with two (gloo on CPU).

Trains a tiny teacher/student pair for a few steps and writes the final student weights and log history.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_char_tokenizer, tiny_llama  # noqa: E402
from test_trainer import instruction_dataset  # noqa: E402

from llm_distill import DistillationConfig, DistillationTrainer  # noqa: E402


def main(output_dir: str, per_device_batch: int, mode: str) -> None:
    tokenizer = make_char_tokenizer()
    ds = instruction_dataset(tokenizer, n=16)
    teacher = tiny_llama(len(tokenizer), layers=4, hidden=48, seed=1)
    student = tiny_llama(len(tokenizer), layers=2, hidden=32, seed=2)
    extra = {"hidden_weight": 1.0, "attention_weight": 0.5} if mode == "features" else {}
    if mode == "onpolicy":
        # Every step trains on the student's own samples: each process samples its own rows, seeded per row.
        extra = {"lmbda": 1.0, "max_new_tokens": 6, "kd_loss": "reverse_kl"}
    if mode.startswith("cached:"):
        # Targets come from a store written beforehand by one process; lookups go by sample id on every rank.
        extra = {"teacher_logits_path": mode.split(":", 1)[1]}
        teacher = None
    args = DistillationConfig(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=per_device_batch,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        data_seed=0,
        ce_weight=0.5,
        **extra,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    if trainer.is_world_process_zero():
        torch.save(
            {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, os.path.join(output_dir, "final.pt")
        )
        with open(os.path.join(output_dir, "log.json"), "w") as fh:
            json.dump(trainer.state.log_history, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
