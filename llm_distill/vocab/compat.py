"""Same-tokenizer pairs: both sides must map every token to the same id; padded vocabulary tails are cut."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def _vocab_diff(teacher_vocab: dict, student_vocab: dict, limit: int = 5) -> list[str]:
    diffs = []
    for token in sorted(set(teacher_vocab) | set(student_vocab)):
        t, s = teacher_vocab.get(token), student_vocab.get(token)
        if t != s:
            diffs.append(f"{token!r}: teacher id {t}, student id {s}")
            if len(diffs) == limit:
                break
    return diffs


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    """Both tokenizers map every token to the same id (what id-by-id distillation needs)."""
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


def check_tokenizers(teacher_tokenizer, student_tokenizer) -> None:
    """Same-tokenizer distillation needs identical token -> id maps; say which tokens differ otherwise."""
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    if not same_vocabulary(teacher_tokenizer, student_tokenizer):
        tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        diffs = _vocab_diff(tv, sv)
        raise ValueError(
            f"the teacher's tokenizer ({len(tv)} tokens) and the student's ({len(sv)} tokens) differ, e.g. "
            + "; ".join(diffs)
            + ". Token-level distillation compares distributions id by id, so both must share one tokenizer; "
            "use the teacher's tokenizer for the student, or set cross_tokenizer_loss (uld, exact or hybrid) to "
            "distil across the two tokenizers."
        )


def shared_vocab_size(teacher_width: int | None, student_config, tokenizer, task: str) -> int | None:
    """The number of leading logit columns to distil over, or None for classification.

    ``teacher_width``: the teacher's output columns (``TeacherSource.output_width``): vocabulary rows, or its number
    of labels for sequence classification. Embedding matrices are often padded past the tokenizer (e.g. 151936 vs
    152064 rows for one Qwen tokenizer); the padded rows are not tokens, so both sides are cut to the tokenizer's real
    size.
    """
    if task == "sequence_classification":
        ns = getattr(student_config, "num_labels", None)
        if teacher_width is not None and ns is not None and teacher_width != ns:
            raise ValueError(
                f"the teacher has num_labels={teacher_width} but the student has num_labels={ns}; they must match"
            )
        return None
    vt, vs = teacher_width, getattr(student_config, "vocab_size", None)
    if vt is None or vs is None:
        return None
    if tokenizer is not None:
        real = len(tokenizer)
        if real > min(vt, vs):
            raise ValueError(
                f"the tokenizer has {real} tokens but the teacher's output vocabulary has {vt} and the student's "
                f"{vs}; both must cover every token"
            )
        return real
    if vt != vs:
        logger.warning(
            "teacher vocab_size=%d and student vocab_size=%d differ and no tokenizer was given to tell the real "
            "token count; distilling over the first %d ids",
            vt,
            vs,
            min(vt, vs),
        )
    return min(vt, vs)
