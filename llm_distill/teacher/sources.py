"""Which teacher source a run uses, decided in one place from what the run was given.

The trainer calls ``build_teacher_source`` once and from then on speaks only the ``TeacherSource`` protocol, so a
new kind of source is added here (and in its own module), not in the trainer.
"""

from __future__ import annotations

from ..tasks import load_model
from .base import TeacherSource
from .cached import CachedTeacher
from .live import LiveTeacher
from .store.fingerprint import expected_store_fingerprint


def build_teacher_source(
    teacher_model, args, *, task: str, tokenizer=None, train_dataset=None, eval_dataset=None
) -> TeacherSource:
    """The run's teacher: a logit store (``args.teacher_logits_path``), a model passed in, or one loaded by name.

    Args:
        teacher_model: an ``nn.Module``, a hub id / folder, or None (then ``args.teacher_model_name_or_path``).
        args: the run's ``DistillationConfig``.
        task: the distillation task (decides the Auto class a named teacher loads with).
        tokenizer, train_dataset, eval_dataset: what a logit store must have been written for (its fingerprint).
    """
    if args.teacher_logits_path:
        if teacher_model is not None:
            raise ValueError("pass either teacher_model or teacher_logits_path, not both")
        expected = expected_store_fingerprint(args, task, tokenizer, train_dataset, eval_dataset)
        return CachedTeacher(args.teacher_logits_path, expected=expected)
    if teacher_model is None and args.teacher_model_name_or_path is None:
        raise ValueError(
            "no teacher: pass teacher_model=..., or set teacher_model_name_or_path or teacher_logits_path"
        )
    name = args.teacher_model_name_or_path
    if teacher_model is None or isinstance(teacher_model, str):
        name = teacher_model or name
        # SDPA and flash attention return no attention maps; the attention term needs the eager implementation.
        kwargs = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        teacher_model = load_model(name, task, dtype=args.teacher_dtype, **kwargs)
    return LiveTeacher(teacher_model, name=name)
