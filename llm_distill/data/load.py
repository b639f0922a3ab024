"""Raw rows from a local file (json/jsonl/csv/tsv/txt/parquet), a ``save_to_disk`` folder or a hub dataset id."""

from __future__ import annotations

import os

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .config import DataConfig
from .prompts import TOKEN_COLUMNS

LOCAL_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".parquet": "parquet",
}


def load_split(path: str, name: str | None = None, split: str = "train", *, field: str = "dataset.path") -> Dataset:
    """One split from a local file (the file *is* the split), a `save_to_disk` folder, or a hub dataset id.

    ``field`` names the setting in errors (a missing file, an empty file, a hub id that cannot be reached).
    """
    ext = os.path.splitext(path)[1].lower()
    if ext in LOCAL_FORMATS:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{field}={path!r} does not exist (relative paths are from {os.getcwd()})")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{field}={path!r} is an empty file; there are no rows to train or evaluate on")
        kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
        try:
            return load_dataset(LOCAL_FORMATS[ext], data_files={"data": path}, split="data", **kwargs)
        except StopIteration as err:  # datasets' json reader on a file of blank lines
            raise ValueError(f"{field}={path!r} holds no rows") from err
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
        loaded = load_from_disk(path)
        return loaded[split] if isinstance(loaded, DatasetDict) else loaded
    try:
        return load_dataset(path, name, split=split)  # a hub id, or a folder with a loading script / data files
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise ValueError(
            f"{field}={path!r} is neither a local .json/.jsonl/.csv/.tsv/.txt/.parquet file nor a saved dataset "
            f"folder, and could not be loaded as a hub dataset (split {split!r}): {' '.join(str(err).split())[:300]}"
        ) from err


def required_columns(cfg: DataConfig, columns: list[str] = ()) -> dict[str, str]:
    """The columns a dataset kind reads: setting name -> column name (``columns``: the dataset's own)."""
    if cfg.task == "text":
        names = ["text_column"]
    elif cfg.task in ("instruction", "prompt_completion"):
        if cfg.task == "prompt_completion" and all(c in columns for c in TOKEN_COLUMNS):
            return {}  # completions written by `llm-distill generate`, used as they are
        names = ["messages_column"] if cfg.messages_column else ["prompt_column", "response_column"]
    else:
        names = ["text_column", "text_pair_column", "label_column"]
    return {f"dataset.{n}": getattr(cfg, n) for n in names if getattr(cfg, n)}


def require_columns(ds: Dataset, cfg: DataConfig) -> None:
    for setting, column in required_columns(cfg, ds.column_names).items():
        if column not in ds.column_names:
            raise ValueError(
                f"{setting}={column!r} is not a column of dataset {cfg.path!r}; its columns are {ds.column_names}"
            )


def load_raw(cfg: DataConfig) -> tuple[Dataset, Dataset | None]:
    train = load_split(cfg.path, cfg.name, cfg.split)
    evaluation = None
    if cfg.eval_path:
        evaluation = load_split(cfg.eval_path, cfg.name, cfg.eval_split or "validation", field="dataset.eval_path")
    elif cfg.eval_split:
        evaluation = load_split(cfg.path, cfg.name, cfg.eval_split)
    elif cfg.eval_size:
        parts = train.train_test_split(test_size=cfg.eval_size, seed=cfg.seed)
        train, evaluation = parts["train"], parts["test"]
    require_columns(train, cfg)
    if evaluation is not None:
        require_columns(evaluation, cfg)
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
