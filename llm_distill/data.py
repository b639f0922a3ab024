"""Dataset recipes: raw data (hub id or local json/csv/text) -> tokenized rows with labels and sample ids.

Every row the trainer sees has ``input_ids``, ``attention_mask``, ``labels`` (-100 where a token does not count)
and ``sample_id`` (a stable integer per row, used to look targets up in a teacher logit store).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from itertools import chain

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

DATA_TASKS = ("text", "instruction", "classification")
LOCAL_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".parquet": "parquet",
}


@dataclass
class DataConfig:
    """The ``dataset:`` block of a recipe."""

    path: str = field(metadata={"help": "Hub dataset id, or a local .json/.jsonl/.csv/.txt/.parquet file."})
    task: str = field(default="text", metadata={"help": f"One of {', '.join(DATA_TASKS)}."})
    name: str | None = field(default=None, metadata={"help": "Hub dataset config name (e.g. sst2 for glue)."})
    split: str = field(default="train", metadata={"help": "Training split."})
    eval_path: str | None = field(default=None, metadata={"help": "Separate local file / hub id for evaluation."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split (e.g. validation)."})
    eval_size: int = field(default=0, metadata={"help": "Hold out this many training rows when no eval split."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (after load)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    max_length: int = field(default=512, metadata={"help": "Tokens per row (truncate, or pack to this length)."})
    packing: bool = field(default=True, metadata={"help": "text task: concatenate documents and cut into blocks."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (text/classification)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second sentence for pair tasks."})
    label_column: str = field(default="label", metadata={"help": "Class label column (classification)."})
    prompt_column: str = field(default="prompt", metadata={"help": "instruction: prompt column (masked out)."})
    response_column: str = field(default="response", metadata={"help": "instruction: response column."})
    messages_column: str | None = field(
        default=None, metadata={"help": "instruction: chat messages column; the last assistant turn is the target."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the held-out split."})

    def __post_init__(self):
        if self.task not in DATA_TASKS:
            raise ValueError(f"dataset.task={self.task!r} is not accepted; expected one of {', '.join(DATA_TASKS)}")
        if self.max_length < 2:
            raise ValueError(f"dataset.max_length={self.max_length} is too small; use at least 2 tokens")

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        from .recipes import reject_unknown_keys

        reject_unknown_keys(values, [f.name for f in fields(cls)], where="dataset")
        return cls(**values)


def load_split(path: str, name: str | None = None, split: str = "train") -> Dataset:
    """One split from a local file (the file *is* the split), a `save_to_disk` folder, or a hub dataset id."""
    ext = os.path.splitext(path)[1].lower()
    if ext in LOCAL_FORMATS:
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset path {path!r} does not exist (relative paths are from {os.getcwd()})")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        return load_dataset(LOCAL_FORMATS[ext], data_files={"data": path}, split="data", **kwargs)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
        loaded = load_from_disk(path)
        return loaded[split] if isinstance(loaded, DatasetDict) else loaded
    return load_dataset(path, name, split=split)  # a hub id, or a folder with a loading script / data files


def load_raw(cfg: DataConfig) -> tuple[Dataset, Dataset | None]:
    train = load_split(cfg.path, cfg.name, cfg.split)
    evaluation = None
    if cfg.eval_path:
        evaluation = load_split(cfg.eval_path, cfg.name, cfg.eval_split or "validation")
    elif cfg.eval_split:
        evaluation = load_split(cfg.path, cfg.name, cfg.eval_split)
    elif cfg.eval_size:
        parts = train.train_test_split(test_size=cfg.eval_size, seed=cfg.seed)
        train, evaluation = parts["train"], parts["test"]
    if cfg.task == "text":
        # Blank lines (paragraph breaks in text files) carry no tokens to learn from.
        keep = lambda row: bool(row[cfg.text_column] and row[cfg.text_column].strip())  # noqa: E731
        train = train.filter(keep)
        evaluation = evaluation.filter(keep) if evaluation is not None else None
    if cfg.max_samples is not None:
        train = train.select(range(min(cfg.max_samples, len(train))))
    if evaluation is not None and cfg.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(cfg.max_eval_samples, len(evaluation))))
    return train, evaluation


def _require_columns(ds: Dataset, columns: list[str | None]) -> None:
    missing = [c for c in columns if c and c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; available: {ds.column_names} (set dataset.*_column)")


def tokenize_text(ds: Dataset, tokenizer, cfg: DataConfig) -> Dataset:
    """Plain text for causal LMs: pack into ``max_length`` blocks (documents joined by EOS) or truncate."""
    _require_columns(ds, [cfg.text_column])
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
    _require_columns(ds, [cfg.messages_column] if cfg.messages_column else [cfg.prompt_column, cfg.response_column])

    def encode(row):
        if cfg.messages_column:
            messages = row[cfg.messages_column]
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError(f"{cfg.messages_column}: the last message must be the assistant's reply")
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(messages, tokenize=True)
            prompt, full = list(_ids(prompt)), list(_ids(full))
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


def _ids(encoded):
    return encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded


def tokenize_classification(ds: Dataset, tokenizer, cfg: DataConfig) -> Dataset:
    """Single sentences or sentence pairs with an integer class label."""
    _require_columns(ds, [cfg.text_column, cfg.text_pair_column, cfg.label_column])

    def encode(batch):
        pair = batch[cfg.text_pair_column] if cfg.text_pair_column else None
        enc = tokenizer(batch[cfg.text_column], pair, truncation=True, max_length=cfg.max_length)
        enc["labels"] = [int(x) for x in batch[cfg.label_column]]
        return dict(enc)

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


TOKENIZERS = {"text": tokenize_text, "instruction": tokenize_instruction, "classification": tokenize_classification}


def with_sample_ids(ds: Dataset, start: int = 0) -> Dataset:
    return ds.add_column("sample_id", list(range(start, start + len(ds))))


def build_datasets(cfg: DataConfig, tokenizer) -> tuple[Dataset, Dataset | None]:
    """Load, tokenize and attach sample ids. Deterministic: the same config and tokenizer give the same rows."""
    train, evaluation = load_raw(cfg)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Padding positions are masked out of every loss, so which id pads them does not matter.
        tokenizer.pad_token = tokenizer.eos_token
    encode = TOKENIZERS[cfg.task]
    train = with_sample_ids(encode(train, tokenizer, cfg))
    # Evaluation ids continue after the training ids: one logit store can serve both without collisions.
    evaluation = with_sample_ids(encode(evaluation, tokenizer, cfg), len(train)) if evaluation is not None else None
    if len(train) == 0:
        raise ValueError(
            f"dataset {cfg.path!r} produced no training rows (max_length={cfg.max_length}, packing={cfg.packing})"
        )
    return train, evaluation


class DistillationCollator:
    """Right-pads a list of rows: input ids with the pad id, labels with -100, attention mask with 0."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_values = {"input_ids": self.pad_id, "attention_mask": 0, "labels": -100, "token_type_ids": 0}
        batch: dict[str, torch.Tensor] = {}
        for key, pad in pad_values.items():
            if key not in rows[0]:
                continue
            if key == "labels" and not isinstance(rows[0][key], list | tuple):
                batch[key] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)  # class labels
                continue
            batch[key] = torch.tensor([list(r[key]) + [pad] * (length - len(r[key])) for r in rows], dtype=torch.long)
        if "sample_id" in rows[0]:
            batch["sample_id"] = torch.tensor([int(r["sample_id"]) for r in rows], dtype=torch.long)
        return batch
