"""Data: raw rows (``load``) -> tokenized rows with counted-token labels and sample ids (``encode``; ``prompts`` for
prompt / completion rows laid out as generation sees them) -> padded batches (``collate``), configured by a recipe's
``dataset:`` block (``config``)."""

from .collate import DistillationCollator
from .config import DataConfig
from .encode import build_datasets, tokenize_classification, tokenize_instruction, tokenize_text, with_sample_ids
from .load import load_raw, load_split
from .prompts import completion_ids, prompt_completion_row, render_prompt, tokenize_prompt_completion

__all__ = [
    "DataConfig",
    "DistillationCollator",
    "build_datasets",
    "completion_ids",
    "load_raw",
    "load_split",
    "prompt_completion_row",
    "render_prompt",
    "tokenize_classification",
    "tokenize_instruction",
    "tokenize_prompt_completion",
    "tokenize_text",
    "with_sample_ids",
]
