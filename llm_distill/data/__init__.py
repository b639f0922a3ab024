"""Data: raw rows (``load``) -> tokenized rows with counted-token labels and sample ids (``encode``) -> padded
batches (``collate``), configured by a recipe's ``dataset:`` block (``config``)."""

from .collate import DistillationCollator
from .config import DataConfig
from .encode import build_datasets, tokenize_classification, tokenize_instruction, tokenize_text, with_sample_ids
from .load import load_raw, load_split

__all__ = [
    "DataConfig",
    "DistillationCollator",
    "build_datasets",
    "load_raw",
    "load_split",
    "tokenize_classification",
    "tokenize_instruction",
    "tokenize_text",
    "with_sample_ids",
]
