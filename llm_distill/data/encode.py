"""Raw rows -> tokenized rows with labels (-100 where a token does not count) and stable sample ids.

Every row the trainer sees has ``input_ids``, ``attention_mask``, ``labels`` and ``sample_id`` (a stable integer per
row, used to look targets up in a teacher logit store).
"""

from __future__ import annotations

from itertools import chain

from datasets import Dataset

from .aligned import aligned_pairs, tokenize_aligned
from .config import DataConfig
from .load import load_raw
from .prompts import tokenize_prompt_completion
from .rows import token_ids
from .teachers import add_teacher_columns


def tokenize_text(ds: Dataset, tokenizer, cfg: DataConfig) -> Dataset:
    """Plain text for causal LMs: pack into ``max_length`` blocks (documents joined by EOS) or truncate."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(batch):
        ids = tokenizer(batch[cfg.text_column], add_special_tokens=not cfg.packing)["input_ids"]
        if not cfg.packing:
            ids = [x[: cfg.max_length] for x in ids]
            return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": ids}
        stream = list(chain.from_iterable(x + eos for x in ids))
        # The remainder shorter than a block is dropped, as in run_clm: a partial block would need padding.
        n = len(stream) // cfg.max_length * cfg.max_length
        blocks = [stream[i : i + cfg.max_length] for i in range(0, n, cfg.max_length)]
        return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": blocks}

    return ds.map(encode, batched=True, batch_size=1000, remove_columns=ds.column_names, desc="tokenize")


def tokenize_instruction(ds: Dataset, tokenizer, cfg: DataConfig) -> Dataset:
    """Prompt/response or chat records; prompt tokens get label -100 so only the response is distilled."""

    def encode(row):
        if cfg.messages_column:
            messages = row[cfg.messages_column]
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError(f"{cfg.messages_column}: the last message must be the assistant's reply")
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(messages, tokenize=True)
            prompt, full = token_ids(prompt), token_ids(full)
        else:
            prompt = tokenizer(row[cfg.prompt_column])["input_ids"]
            response = tokenizer(row[cfg.response_column], add_special_tokens=False)["input_ids"]
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            full = prompt + response + eos
        if full[: len(prompt)] != prompt:
            raise ValueError("the prompt's tokens are not a prefix of the full conversation's; cannot mask the prompt")
        full = full[: cfg.max_length]
        labels = [-100] * min(len(prompt), len(full)) + full[len(prompt) :]
        return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}

    return ds.map(encode, remove_columns=ds.column_names, desc="tokenize")


def tokenize_classification(ds: Dataset, tokenizer, cfg: DataConfig) -> Dataset:
    """Single sentences or sentence pairs with an integer class label."""

    def encode(batch):
        pair = batch[cfg.text_pair_column] if cfg.text_pair_column else None
        enc = tokenizer(batch[cfg.text_column], pair, truncation=True, max_length=cfg.max_length)
        enc["labels"] = [int(x) for x in batch[cfg.label_column]]
        return dict(enc)

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


ENCODERS = {
    "text": tokenize_text,
    "instruction": tokenize_instruction,
    "classification": tokenize_classification,
    "prompt_completion": tokenize_prompt_completion,
}


def with_sample_ids(ds: Dataset, start: int = 0) -> Dataset:
    return ds.add_column("sample_id", list(range(start, start + len(ds))))


def build_datasets(
    cfg: DataConfig, tokenizer, *, teacher_tokenizer=None, **teacher_columns
) -> tuple[Dataset, Dataset | None]:
    """Load, tokenize and attach sample ids. Deterministic: the same config and tokenizer give the same rows.

    ``teacher_tokenizer``: a teacher tokenizer that differs from the student's; each row then also holds the
    teacher's tokenization and the aligned positions (``data.aligned``).
    ``teacher_columns`` (``teacher_prompt``, ``teacher_column``, ``teacher_names``): per-row columns that teacher
    sources read, see ``data.teachers.add_teacher_columns``.
    """
    train, evaluation = load_raw(cfg)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Padding positions are masked out of every loss, so which id pads them does not matter.
        tokenizer.pad_token = tokenizer.eos_token

    def encode(raw: Dataset) -> Dataset:
        if teacher_tokenizer is not None:
            return tokenize_aligned(raw, tokenizer, teacher_tokenizer, cfg)
        encoded = ENCODERS[cfg.task](raw, tokenizer, cfg)
        return add_teacher_columns(encoded, raw, tokenizer, cfg, **teacher_columns) if teacher_columns else encoded

    train = with_sample_ids(encode(train))
    # Evaluation ids continue after the training ids: one logit store can serve both without collisions.
    evaluation = with_sample_ids(encode(evaluation), len(train)) if evaluation is not None else None
    prompts_only = cfg.task == "prompt_completion" and cfg.response_column is None and not cfg.messages_column
    for name, ds in (("training", train), ("evaluation", evaluation)):
        # Prompts alone are complete rows when the completions are generated (on-policy, seq_kd).
        if ds is not None and not prompts_only and counted_tokens(ds) == 0:
            raise ValueError(
                f"dataset {cfg.path!r} gives no {name} rows with a counted token (rows: {len(ds)}, "
                f"dataset.max_length={cfg.max_length}, packing={cfg.packing}): nothing to distil or evaluate; check "
                "the file, the columns, and that prompts leave room for responses within max_length"
            )
        if ds is not None and teacher_tokenizer is not None and aligned_pairs(ds) == 0:
            raise ValueError(
                f"dataset {cfg.path!r}: no {name} position where the student's and the teacher's tokenizations end "
                "at the same character; nothing for cross_tokenizer_loss to compare"
            )
    return train, evaluation


def counted_tokens(ds: Dataset) -> int:
    """Labels that count (not -100) over a tokenized dataset; a class label counts once per row."""
    if len(ds) == 0:
        return 0
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.data.column("labels").combine_chunks()
    values = (
        pc.list_flatten(column) if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) else column
    )
    return int(pc.sum(pc.not_equal(values, -100)).as_py() or 0)
