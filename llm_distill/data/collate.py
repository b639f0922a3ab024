"""Batching rows of different lengths without changing what counts."""

from __future__ import annotations

import torch

# One integer per row, carried into the batch as a (B,) tensor: the logit store looks targets up by sample id, and
# generation starts from the first prompt_length tokens of a prompt / completion row.
ROW_SCALARS = ("sample_id", "prompt_length")


def _padded(rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, L)`` int64 values (0 where padded; at least one column) and their 0/1 mask."""
    width = max(1, max(len(r) for r in rows))
    values = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return values, mask


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
        for key in ROW_SCALARS:
            if key in rows[0]:
                batch[key] = torch.tensor([int(r[key]) for r in rows], dtype=torch.long)
        if "teacher_index" in rows[0]:
            batch["teacher_index"] = torch.tensor([int(r["teacher_index"]) for r in rows], dtype=torch.long)
        if "teacher_input_ids" in rows[0]:
            # A teacher with another tokenizer: its own ids (right-padded, with their mask) and the aligned pairs.
            batch["teacher_input_ids"], batch["teacher_attention_mask"] = _padded(
                [r["teacher_input_ids"] for r in rows]
            )
            batch["align_student"], batch["align_mask"] = _padded([r["align_student"] for r in rows])
            batch["align_teacher"], _ = _padded([r["align_teacher"] for r in rows])
        if "teacher_prompt_ids" in rows[0]:
            # The context teacher's own prompt, right-padded; its mask says which ids are real.
            width = max(len(r["teacher_prompt_ids"]) for r in rows)
            prompts = [list(r["teacher_prompt_ids"]) for r in rows]
            batch["teacher_prompt_ids"] = torch.tensor([p + [self.pad_id] * (width - len(p)) for p in prompts])
            batch["teacher_prompt_mask"] = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
        return batch
