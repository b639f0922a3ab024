"""A cross-tokenizer arm run with TRL's experimental GOLD trainer (``trl.experimental.gold``), off-policy, ULD loss.

Matched with our arms: the same teacher (float32) and student folder (student tokenizer != teacher tokenizer), the
same raw text rows, each read by both sides in its own tokens, the student truncated to its first ``max_length``
tokens of each row; the same optimizer steps, batch, learning rate, schedule, warmup and seed; temperature 1; ULD
(L1 between the two sorted probability vectors, the shorter vocabulary padded with zeros); 0.5 KD + 0.5 CE
(GOLD's ``uld_distillation_weight`` / ``uld_crossentropy_weight``); no student generation (``lmbda=0``).

What differs (GOLD's own behaviour, not changed here):

- Rows. GOLD needs a prompt: a row whose prompt is empty is rejected by its collator ("An example has no prompt
  tokens left", ``trl/experimental/utils.py`` ``DataCollatorForChatML``). Each row is therefore prompt
  ``"<|endoftext|>"`` (one token, the document separator, in both GPT-2 and SmolLM2) + completion = the text, so
  both sides also predict the text's first token from that separator, which our arms (no BOS on either side) do
  not. GOLD appends each side's EOS: the CE target includes the student's EOS; the KD term skips both EOS.
  GOLD truncates by keeping the *end* of a row, which would drop the prompt, so the text is cut here to its first
  ``max_length`` student tokens and GOLD's ``max_length`` is ``max_length + 2`` (separator + EOS): GOLD cuts
  nothing. The student batch is left-padded (positions shifted; RoPE depends only on relative positions).
- Alignment. GOLD groups tokens between byte offsets where both tokenizations have a boundary. With
  ``uld_token_merge_strategy="bayesian"`` (used here; TRL's default "observed" compares the distribution *after*
  a group's first token), a one-token group on both sides compares the two next-token distributions after the
  same text, as our aligned pairs do; a longer group compares P(last token | prefix) times the probabilities of the
  group's earlier actual tokens (an unnormalised vector), where our arms compare the position before the group.
- Normalisation. GOLD's KD is, per row, the sum over groups of the sorted-L1 divided by that row's group count,
  then the mean over rows (our arms: the mean over all aligned positions of the batch). Its CE is
  ``nn.CrossEntropyLoss`` mean over the batch's labelled student tokens. No T**2 factor (T = 1 anyway).
- Sampling. GOLD shuffles with its ``RepeatSampler`` (seeded); the order differs from our arms, the set does not.
"""

from __future__ import annotations

import argparse
import json
import os

from _runs import train_seconds

SEPARATOR = "<|endoftext|>"


def gold_settings(*, max_length: int, token_merge_strategy: str = "bayesian") -> dict:
    """The GOLDConfig options this arm sets (besides the shared Trainer ones), for honest printing."""
    return {
        "use_uld_loss": True,
        "use_extended_uld": True,  # byte-offset groups, not plain positional truncation
        "uld_use_hybrid_loss": False,
        "uld_token_merge_strategy": token_merge_strategy,
        "uld_distillation_weight": 0.5,
        "uld_crossentropy_weight": 0.5,
        "uld_student_temperature": 1.0,
        "uld_teacher_temperature": 1.0,
        "uld_skip_student_eos": True,
        "uld_skip_teacher_eos": True,
        "lmbda": 0.0,  # off-policy only: no student generation
        "seq_kd": False,
        "max_length": max_length + 2,  # prompt separator + text (cut to max_length student tokens) + EOS
        "prompt": SEPARATOR,
    }


def run_gold(*, teacher_dir: str, student_dir: str, train_jsonl: str, out: str, steps: int, batch_size: int,
             learning_rate: float, max_length: int, seed: int, lr_scheduler_type: str = "cosine",
             warmup_steps: int = 20, token_merge_strategy: str = "bayesian",
             logging_steps: int = 10) -> dict:  # fmt: skip
    """Train (unless ``out`` already holds a finished run) and return
    ``{"train_seconds", "steps", "log_history", "settings"}``."""
    settings = gold_settings(max_length=max_length, token_merge_strategy=token_merge_strategy)
    state_path = os.path.join(out, "trainer_state.json")
    if not os.path.exists(state_path):
        _train(teacher_dir, student_dir, train_jsonl, out, steps, batch_size, learning_rate, max_length, seed,
               lr_scheduler_type, warmup_steps, logging_steps, settings)  # fmt: skip
    with open(state_path) as fh:
        history = json.load(fh)["log_history"]
    seconds = train_seconds([out])
    return {"train_seconds": seconds, "steps": steps, "log_history": history, "settings": settings}


def _cut(text: str, tokenizer, max_length: int) -> str:
    """The text up to the end of its ``max_length``-th student token (re-checked: BPE of a prefix may differ)."""
    n = max_length
    while True:
        enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        if len(enc.ids) <= max_length:
            return text
        text = text[: enc.offsets[n - 1][1]]
        n = max(1, n - 1)


def _train(teacher_dir, student_dir, train_jsonl, out, steps, batch_size, learning_rate, max_length, seed,
           lr_scheduler_type, warmup_steps, logging_steps, settings):  # fmt: skip
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GOLD's collator needs one; padded positions are masked
    with open(train_jsonl) as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    rows = [{"prompt": SEPARATOR, "completion": _cut(t, tokenizer, max_length)} for t in texts if t.strip()]
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype="float32")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype="float32")
    options = {k: v for k, v in settings.items() if k != "prompt"}
    args = GOLDConfig(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=learning_rate,
        lr_scheduler_type=lr_scheduler_type,
        warmup_steps=warmup_steps,
        logging_steps=logging_steps,
        save_strategy="no",
        seed=seed,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        temperature=1.0,
        max_completion_length=1,  # generation length: unused with lmbda=0, must be < max_length
        teacher_tokenizer_name_or_path=teacher_dir,
        **options,
    )
    trainer = GOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)
    trainer.state.save_to_json(os.path.join(out, "trainer_state.json"))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher_dir", default="assets/smollm2-135m")
    p.add_argument("--student_dir", required=True)
    p.add_argument("--train_jsonl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr_scheduler_type", default="cosine")
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--token_merge_strategy", default="bayesian", choices=("bayesian", "observed"))
    a = p.parse_args()
    result = run_gold(**vars(a))
    print(json.dumps({k: result[k] for k in ("train_seconds", "steps", "settings")}, indent=1))
    for entry in result["log_history"]:
        print(entry)
