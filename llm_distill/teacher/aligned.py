"""A teacher with another tokenizer: it reads its own tokenization of the row and answers at the aligned positions.

Each batch row carries the teacher's ids (``teacher_input_ids`` / ``teacher_attention_mask``) and the aligned
pairs (``align_student`` / ``align_teacher`` / ``align_mask``, made once by ``data.aligned``). The inner source scores
the teacher's ids; its logits are gathered at ``align_teacher``, so the targets are ``(B, P, V_T)``: pair p of row b,
in the teacher's vocabulary. The trainer gathers the student's logits at ``align_student`` and compares the two
with a loss of ``losses.cross_vocab``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..vocab.align import gather_positions
from .base import TeacherOutputs, TeacherSource, WrappingSource

ALIGNED_BATCH_KEYS = ("teacher_input_ids", "teacher_attention_mask", "align_student", "align_teacher", "align_mask")


class AlignedTeacher(WrappingSource):
    """Wraps a live teacher source so that it reads the teacher's own tokenization of each row.

    Args:
        inner: the source that scores the teacher's ids (a live model).
        tokenizer_name: what ``describe`` records as the teacher's tokenizer.
    """

    def __init__(self, inner: TeacherSource, *, tokenizer_name: str | None = None):
        super().__init__(inner)
        self.tokenizer_name = tokenizer_name

    def describe(self) -> dict:
        return {**self.inner.describe(), "teacher_tokenizer": self.tokenizer_name}

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        if hidden_layers or attention_layers or want_final_hidden:
            raise ValueError(
                "a teacher with another tokenizer answers with logits at aligned positions only: hidden/attention "
                "terms and the fused loss cannot be aligned"
            )
        missing = [k for k in ALIGNED_BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(
                f"cross_tokenizer_loss is set but the batch lacks {missing}; build the dataset with "
                "build_datasets(..., teacher_tokenizer=...) (recipes do this)"
            )
        teacher = {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
        out = self.inner(teacher, want_logits=want_logits)
        return TeacherOutputs(logits=gather_positions(out.logits, batch["align_teacher"]))
