"""Context distillation: the teacher reads its own prompt (a hint, the reference answer) before the same completion.

Each row of the batch carries the teacher's prompt ids (``teacher_prompt_ids`` / ``teacher_prompt_mask``, made by
``data.context.add_teacher_prompts`` from the ``teacher_prompt`` template). The completion is whatever the student's
row holds from its first labelled token to its last real token — the dataset's response, or a completion sampled by
the student — so the same source serves off- and on-policy batches. The teacher scores ``teacher prompt +
completion``; its outputs are then re-indexed onto the student's positions: with ``Ls`` the student's first
completion position and ``Lt`` the teacher prompt's length, student position t (which predicts token t + 1) is
teacher position ``t + Lt - Ls``. Positions outside the completion map to clamped, uncounted positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import TeacherOutputs, TeacherSource, WrappingSource


def completion_spans(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, end)`` per row, ``(B,)`` each: the first labelled position and one past the last real token.

    Labels are the un-shifted ``labels`` of the batch (-100 on the prompt and on padding). A row with no labelled
    token gets an empty span at its end.
    """
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    real = batch["attention_mask"].bool() if batch.get("attention_mask") is not None else torch.ones_like(ids).bool()
    end = torch.where(real, positions + 1, torch.zeros_like(positions)).amax(1)
    labelled = (batch["labels"] != -100) & real
    start = torch.where(labelled, positions, torch.full_like(positions, ids.shape[1])).amin(1)
    return torch.minimum(start, end), end


class ContextTeacher(WrappingSource):
    """Wraps any teacher source so that it reads ``teacher prompt + the student's completion``.

    Args:
        inner: the source that scores the teacher's sequences (a frozen self-copy, the live student, a live model).
        pad_token_id: the id that pads the teacher's sequences (masked out by their attention mask).
    """

    def __init__(self, inner: TeacherSource, *, pad_token_id: int = 0):
        super().__init__(inner)
        self.pad_token_id = pad_token_id

    def describe(self) -> dict:
        return {**self.inner.describe(), "teacher_prompt": True}

    def __getattr__(self, name):
        # after_optimizer_step / teacher_state / load_teacher_state of a trained inner source (an EMA copy).
        if name in ("after_optimizer_step", "teacher_state", "load_teacher_state"):
            return getattr(self.inner, name)
        raise AttributeError(name)

    def teacher_batch(self, batch: dict) -> tuple[dict, torch.Tensor]:
        """The teacher's rows (right-padded) and the per-row shift ``Lt - Ls`` from student to teacher positions."""
        if "teacher_prompt_ids" not in batch:
            raise KeyError(
                "teacher_prompt is set but the batch has no 'teacher_prompt_ids'; build the dataset with "
                "build_datasets(..., teacher_prompt=...) (recipes do this)"
            )
        start, end = completion_spans(batch)
        prompt_len = batch["teacher_prompt_mask"].sum(1)
        rows, label_rows = [], []
        for b in range(batch["input_ids"].shape[0]):
            prompt = batch["teacher_prompt_ids"][b, : prompt_len[b]]
            completion = batch["input_ids"][b, start[b] : end[b]]
            rows.append(torch.cat([prompt, completion]))
            label_rows.append(torch.cat([torch.full_like(prompt, -100), batch["labels"][b, start[b] : end[b]]]))
        width = max(int(r.shape[0]) for r in rows)
        ids = batch["input_ids"].new_full((len(rows), width), self.pad_token_id)
        labels = batch["input_ids"].new_full((len(rows), width), -100)
        attention = batch["input_ids"].new_zeros((len(rows), width))
        for b, (row, label_row) in enumerate(zip(rows, label_rows)):
            ids[b, : row.shape[0]], labels[b, : row.shape[0]], attention[b, : row.shape[0]] = row, label_row, 1
        teacher = {"input_ids": ids, "attention_mask": attention, "labels": labels}
        for key in ("sample_id", "teacher_index"):  # per-row keys other sources read (store lookups, routing)
            if key in batch:
                teacher[key] = batch[key]
        return teacher, prompt_len - start

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        if hidden_layers or attention_layers:
            raise ValueError("a context teacher reads another sequence: hidden/attention terms cannot be aligned")
        teacher, shift = self.teacher_batch(batch)
        out = self.inner(teacher, want_logits=want_logits, want_final_hidden=want_final_hidden)
        seq = batch["input_ids"].shape[1]
        index = torch.arange(seq, device=shift.device)[None, :] + shift[:, None]
        index = index.clamp(0, teacher["input_ids"].shape[1] - 1)

        def realign(t: torch.Tensor) -> torch.Tensor:  # (B, S_t, ...) -> (B, S, ...)
            where = index.to(t.device).reshape(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return t.gather(1, where)

        return out.map_positions(realign)
