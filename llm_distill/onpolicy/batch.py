"""From a training batch to its prompts, and from prompts + completions back to a training batch.

The rebuilt batch is laid out exactly like a dataset's prompt / completion rows (``data.prompts``), right-padded by
the same collator, so ``tasks.targets`` — the one definition of a counted token — counts exactly the completion
tokens (EOS included) and never a prompt or padding token.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch

from ..data import DistillationCollator, prompt_completion_row

# Marks a batch whose completions were generated in this step, and by whom ("student" or "teacher").
SOURCE_KEY = "completion_source"


def prompt_lengths(batch: dict) -> list[int]:
    """Prompt tokens per row: the ``prompt_length`` column of prompt / completion rows; for instruction rows (no such
    column) the real tokens before the first labelled one (all of them when nothing is labelled)."""
    if batch.get("prompt_length") is not None:
        return [int(n) for n in batch["prompt_length"].tolist()]
    if batch.get("labels") is None:
        raise ValueError(
            "on-policy steps need prompts: use dataset.task prompt_completion (or instruction rows, whose prompt "
            "is the unlabelled part)"
        )
    out = []
    for labels, real in zip(batch["labels"].tolist(), _real(batch).tolist()):
        labelled = [i for i, (label, r) in enumerate(zip(labels, real)) if r and label != -100]
        out.append(sum(real[: labelled[0]]) if labelled else sum(real))
    return out


def _real(batch: dict) -> torch.Tensor:
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].bool()
    return torch.ones_like(batch["input_ids"], dtype=torch.bool)


def batch_prompts(batch: dict) -> list[list[int]]:
    """The prompt ids of every row (its first ``prompt_length`` real tokens, whatever side the padding is on)."""
    lengths = prompt_lengths(batch)
    prompts = []
    for ids, real, n in zip(batch["input_ids"].tolist(), _real(batch).tolist(), lengths):
        tokens = [t for t, r in zip(ids, real) if r]
        if n == 0:
            raise ValueError(
                "a row has an empty prompt (its first token is already a target, as in plain-text rows); on-policy "
                "steps need prompt / completion or instruction rows"
            )
        prompts.append(tokens[:n])
    return prompts


def completion_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    device,
    sample_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels``/``prompt_length`` (+ ``sample_id``) of prompt +
    completion rows, on ``device``."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        row = prompt_completion_row(prompt, completion, max_length=len(prompt) + len(completion) + 1)
        if sample_ids is not None:
            row["sample_id"] = int(sample_ids[i])
        rows.append(row)
    batch = DistillationCollator(SimpleNamespace(pad_token_id=pad_id))(rows)
    return {k: v.to(device) for k, v in batch.items()}
