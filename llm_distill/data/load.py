"""Raw rows from a local file (json/jsonl/csv/tsv/txt/parquet), a ``save_to_disk`` folder or a hub dataset id."""

from __future__ import annotations

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .config import DataConfig

LOCAL_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".parquet": "parquet",
}


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
