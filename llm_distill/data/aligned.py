"""Rows for a teacher with another tokenizer: the raw text tokenized by both sides, with the aligned positions.

Each row keeps the student's ``input_ids`` / ``attention_mask`` / ``labels`` (exactly as ``encode.py`` would
write them for the student alone) and adds the teacher's ``teacher_input_ids`` and the aligned pairs
``align_student`` / ``align_teacher``: student position ``align_student[p]`` and teacher position
``align_teacher[p]`` predict the next token after the same characters (``vocab.align``). Alignment is done once,
here, so that batching, multi-process sharding and resume never re-tokenize.
"""

from __future__ import annotations

from datasets import Dataset

from ..vocab import align_batch, chat_example, prompt_example, text_example
from .config import DataConfig

ALIGNED_TASKS = ("text", "instruction")


def check_aligned_data(cfg: DataConfig) -> None:
    """What cross-tokenizer rows need of the ``dataset:`` block, before anything is read."""
    if cfg.task not in ALIGNED_TASKS:
        raise ValueError(
            f"dataset.task={cfg.task!r} with cross_tokenizer_loss: the raw text is re-tokenized for the teacher, "
            f"which is built for dataset.task {' or '.join(ALIGNED_TASKS)}"
        )
    if cfg.task == "text" and cfg.packing:
        raise ValueError(
            "dataset.packing=true with cross_tokenizer_loss: packed blocks cut text at student-token boundaries that "
            "the teacher's tokenization does not share; set dataset.packing=false (one row per document)"
        )


def _examples(batch: dict, cfg: DataConfig, tokenizer, teacher_tokenizer) -> list:
    rows = range(len(next(iter(batch.values()))))
    if cfg.task == "text":
        return [text_example(batch[cfg.text_column][i]) for i in rows]
    if cfg.messages_column:
        return [chat_example(batch[cfg.messages_column][i], tokenizer, teacher_tokenizer) for i in rows]
    return [prompt_example(batch[cfg.prompt_column][i], batch[cfg.response_column][i]) for i in rows]


def tokenize_aligned(ds: Dataset, tokenizer, teacher_tokenizer, cfg: DataConfig) -> Dataset:
    """Raw rows -> student rows + the teacher's ids and the aligned pairs (see the module docstring).

    The student side is truncated at ``dataset.max_length``; the teacher side keeps what its aligned positions
    read (a causal teacher's position j sees tokens 0..j only), so it is never longer than it needs to be. Rows
    whose text gives no token at all (blank lines) are dropped.
    """
    check_aligned_data(cfg)

    def encode(batch):
        aligned = align_batch(
            _examples(batch, cfg, tokenizer, teacher_tokenizer),
            tokenizer,
            teacher_tokenizer,
            max_length=cfg.max_length,
        )
        out = {k: [] for k in ("input_ids", "attention_mask", "labels", "teacher_input_ids", "align_student",
                               "align_teacher")}  # fmt: skip
        for b in range(aligned.student_input_ids.shape[0]):
            n = int(aligned.student_attention_mask[b].sum())
            if n == 0:
                continue  # an empty text (a blank line of a .txt file) has nothing to read or predict
            pairs = aligned.pair_mask[b]
            student_positions = aligned.student_positions[b][pairs].tolist()
            teacher_positions = aligned.teacher_positions[b][pairs].tolist()
            n_teacher = max(teacher_positions, default=0) + 1
            out["input_ids"].append(aligned.student_input_ids[b, :n].tolist())
            out["attention_mask"].append([1] * n)
            out["labels"].append(aligned.student_labels[b, :n].tolist())
            out["teacher_input_ids"].append(aligned.teacher_input_ids[b, :n_teacher].tolist())
            out["align_student"].append(student_positions)
            out["align_teacher"].append(teacher_positions)
        return out

    return ds.map(encode, batched=True, batch_size=256, remove_columns=ds.column_names, desc="tokenize (aligned)")


def aligned_pairs(ds: Dataset) -> int:
    """Aligned positions over an aligned dataset (the KD term's counted items)."""
    return sum(len(p) for p in ds["align_student"]) if len(ds) else 0
