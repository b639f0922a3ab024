"""Token ids out of whatever a tokenizer call returned (a list, or a mapping holding ``input_ids``)."""

from __future__ import annotations


def token_ids(encoded) -> list[int]:
    """The ids of a tokenizer / ``apply_chat_template`` result: a list, or a mapping holding ``input_ids``."""
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return list(ids)
