"""One measured training run for ``plan_memory.py``: peak memory and step time of real steps of one recipe.

    python benchmarks/plan_worker.py RECIPE.yaml --out result.json [--key value ...]

Run in a fresh process per configuration, started by ``plan_memory.py`` with glibc told to serve every allocation of
64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_=65536``), so that a freed tensor leaves the resident set at once
and the resident set tracks the live tensor bytes. What is measured:

- ``baseline``: resident set after the imports, the tokenizer and the tokenized data, just before any model is built;
- ``peak``: the kernel's high-water mark of the resident set (``VmHWM``), reset when training begins (after freed
  memory was handed back with ``malloc_trim``), read after the last step: model weights, optimizer state and
  everything a step allocates;
- ``measured`` = peak - baseline; ``step_seconds``: wall time of each optimizer step (the Trainer's step hooks).

The models are built the way ``llm-distill train`` builds them (teacher in its dtype, student from the teacher or from
its own checkpoint, LoRA when the recipe asks for it), and the real ``DistillationTrainer`` runs the steps.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time

import torch
from transformers import AutoTokenizer, TrainerCallback

from llm_distill import DistillationTrainer
from llm_distill.data import DataConfig, DistillationCollator, build_datasets
from llm_distill.recipes import load_recipe
from llm_distill.student import apply_lora, student_from_teacher
from llm_distill.tasks import load_model


def status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def release_and_reset_peak() -> None:
    """Hand freed heap memory back to the kernel, then make the high-water mark the current resident set."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class PeakCallback(TrainerCallback):
    def __init__(self):
        self.step_seconds: list[float] = []
        self.peaks_kb: list[int] = []
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        release_and_reset_peak()
        self.begin_kb = status_kb("VmRSS")

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._start)
        self.peaks_kb.append(status_kb("VmHWM"))


class LengthRecorder:
    """The trainer's collator, noting the (rows, padded length) of every batch it makes."""

    def __init__(self, collator):
        self.collator = collator
        self.shapes: list[list[int]] = []

    def __call__(self, rows):
        batch = self.collator(rows)
        self.shapes.append(list(batch["input_ids"].shape))
        return batch


def task_of(args, recipe) -> str:
    if args.task != "auto":
        return args.task
    return "sequence_classification" if recipe.dataset.get("task", "text") == "classification" else "causal_lm"


def build_student(recipe, args, task: str, teacher):
    spec = dict(recipe.student)
    extra = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
    if spec.get("from_teacher") is not None:
        shape = dict(spec["from_teacher"])
        init_from = shape.pop("init_from", None)
        source = load_model(init_from, task, **extra) if init_from else teacher
        student = student_from_teacher(source, **shape)
        if extra:
            student.set_attn_implementation("eager")
        del source
    else:
        student = load_model(spec["model_name_or_path"], task, dtype=spec.get("dtype", "auto"), **extra)
    if spec.get("peft"):
        student = apply_lora(student, **{k: v for k, v in spec["peft"].items() if k != "merge"})
    return student


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--out", required=True)
    ns, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(2)
    recipe = load_recipe(ns.recipe, overrides)
    args = recipe.training_args()
    task = task_of(args, recipe)
    args.task = task
    source = recipe.student.get("model_name_or_path") or args.teacher_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source)
    train_ds, _ = build_datasets(DataConfig.from_dict(recipe.dataset), tokenizer)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline_kb = status_kb("VmRSS")

    live = bool(args.teacher_model_name_or_path) and not args.teacher_logits_path
    teacher = None
    if args.teacher_model_name_or_path and (live or recipe.student.get("from_teacher") is not None):
        attn = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype, **attn)
    student = build_student(recipe, args, task, teacher)
    if not live:
        teacher = None
    callback = PeakCallback()
    collator = LengthRecorder(DistillationCollator(tokenizer))
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    result = {
        "baseline_mb": baseline_kb / 1024,
        "at_train_begin_mb": callback.begin_kb / 1024,
        "peak_mb": max(callback.peaks_kb) / 1024,
        "measured_mb": (max(callback.peaks_kb) - baseline_kb) / 1024,
        "peak_after_step_mb": [(p - baseline_kb) / 1024 for p in callback.peaks_kb],
        "step_seconds": callback.step_seconds,
        "batch_shapes": collator.shapes,
    }
    with open(ns.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
