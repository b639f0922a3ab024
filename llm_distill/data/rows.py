"""Small helpers every encoder shares: required columns, and token ids out of whatever a tokenizer call returned."""

from __future__ import annotations

from datasets import Dataset


def require_columns(ds: Dataset, columns: list[str | None]) -> None:
    missing = [c for c in columns if c and c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; available: {ds.column_names} (set dataset.*_column)")


def token_ids(encoded) -> list[int]:
    """The ids of a tokenizer / ``apply_chat_template`` result: a list, or a mapping holding ``input_ids``."""
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return list(ids)
