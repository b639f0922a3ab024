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
from llm_distill.online import OnlineDistillationTrainer, mutual_learning  # noqa: E402

# Relation terms, scores, RKD and token-level selection at once. RKD relates the samples of each micro-batch, so
# the single-process run must see the same micro-batches: batch 4 x accumulation 2 against 2 processes x batch 4.
RELATIONAL = {
    "attention_weight": 0.5,
    "attention_on": "scores",
    "relation_weight": 1.0,
    "relation_heads": 4,
    "rkd_distance_weight": 1.0,
    "rkd_angle_weight": 2.0,
    "data_selection": {"score": "excess_loss", "level": "token", "keep": 0.6},
}


def main(output_dir: str, per_device_batch: int, mode: str, accumulation: int = 1) -> None:
    tokenizer = make_char_tokenizer()
    ds = instruction_dataset(tokenizer, n=16)
    teacher = tiny_llama(len(tokenizer), layers=4, hidden=48, seed=1)
    student = tiny_llama(len(tokenizer), layers=2, hidden=32, seed=2)
    extra = {"hidden_weight": 1.0, "attention_weight": 0.5} if mode == "features" else {}
    teacher_tokenizer = None
    if mode == "cross_tokenizer":
        # A teacher with whole-word tokens: KD over aligned positions, CE over the student's counted tokens.
        from test_cross_tokenizer_trainer import cross_dataset, student_tokenizer

        teacher_tokenizer = student_tokenizer()
        ds = cross_dataset(tokenizer, teacher_tokenizer, n=16)
        teacher = tiny_llama(len(teacher_tokenizer), layers=4, hidden=48, seed=1)
        extra = {"cross_tokenizer_loss": "hybrid"}
    if mode == "relational":
        extra = dict(RELATIONAL)
    elif mode == "onpolicy":
        # Every step trains on the student's own samples: each process samples its own rows, seeded per row.
        extra = {"lmbda": 1.0, "max_new_tokens": 6, "kd_loss": "reverse_kl"}
    if mode.startswith("cached:"):
        # Targets come from a store written beforehand by one process; lookups go by sample id on every rank.
        extra = {"teacher_logits_path": mode.split(":", 1)[1]}
        teacher = None
    elif mode == "ema":  # every process updates its EMA from the same synchronised weights
        extra, teacher = {"self_teacher": "ema", "ema_decay": 0.5}, None
    elif mode == "teachers":
        extra = {"teachers": ["a", "b"], "multi_teacher": "sum"}
        teacher = [teacher, tiny_llama(len(tokenizer), layers=3, hidden=48, seed=5)]
    elif mode == "mutual":
        extra, teacher = {"online_distillation": "mutual", "kd_weight": 1.0}, None
    args = DistillationConfig(
        output_dir=output_dir,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=accumulation,
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
    if mode == "mutual":
        peers = {"student_0": student, "student_1": tiny_llama(len(tokenizer), layers=2, hidden=32, seed=3)}
        trainer = OnlineDistillationTrainer(
            peers, args, learns_from=mutual_learning(list(peers)), train_dataset=ds, processing_class=tokenizer
        )
    else:
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
            teacher_processing_class=teacher_tokenizer,
        )
    trainer.train()
    if trainer.is_world_process_zero():
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        if mode == "ema":
            state.update({f"teacher.{k}": v for k, v in trainer.teacher.teacher_state().items()})
        torch.save(state, os.path.join(output_dir, "final.pt"))
        with open(os.path.join(output_dir, "log.json"), "w") as fh:
            json.dump(trainer.state.log_history, fh)
    if torch.distributed.is_initialized():
        # Leave without the interpreter's teardown: destroying gloo process groups at exit can abort the process
        # ("terminate called without an active exception") after every result was written, and an explicit
        # destroy_process_group has hung here when the other process had already left.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *(int(a) for a in sys.argv[4:]))
