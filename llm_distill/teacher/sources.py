"""Which teacher source a run uses, decided in one place from what the run was given.

The trainer calls ``build_teacher_source`` once and from then on speaks only the ``TeacherSource`` protocol, so a
new kind of source is added here (and in its own module), not in the trainer.
"""

from __future__ import annotations

from ..tasks import load_model
from .aligned import AlignedTeacher
from .base import TeacherSource
from .cached import CachedTeacher
from .context import ContextTeacher
from .live import LiveTeacher
from .multi import MultiTeacher
from .own import EmaTeacher, OwnWeightsTeacher
from .store.fingerprint import expected_store_fingerprint


def build_teacher_source(
    teacher_model,
    args,
    *,
    task: str,
    tokenizer=None,
    train_dataset=None,
    eval_dataset=None,
    student=None,
    teacher_tokenizer=None,
) -> TeacherSource:
    """The run's teacher: a logit store (``args.teacher_logits_path``), a model passed in, or one loaded by name.

    Args:
        teacher_model: an ``nn.Module``, a hub id / folder, or None (then ``args.teacher_model_name_or_path``).
        args: the run's ``DistillationConfig``.
        task: the distillation task (decides the Auto class a named teacher loads with).
        tokenizer, train_dataset, eval_dataset: what a logit store must have been written for (its fingerprint).
        student: the student model, for the sources that are made of it (``self_teacher``).
        teacher_tokenizer: a teacher tokenizer that differs from the student's (``cross_tokenizer_loss``): the teacher
            then reads its own tokenization of each row (``aligned.AlignedTeacher``).
    """
    source = _who_teaches(teacher_model, args, task, tokenizer, train_dataset, eval_dataset, student)
    if source is None:
        source = _single_teacher(teacher_model, args, task, tokenizer, train_dataset, eval_dataset)
    if getattr(args, "teacher_prompt", None):
        pad = getattr(tokenizer, "pad_token_id", None)
        source = ContextTeacher(source, pad_token_id=pad if pad is not None else 0)
    if teacher_tokenizer is not None:
        source = AlignedTeacher(source, tokenizer_name=getattr(teacher_tokenizer, "name_or_path", None))
    return source


def _who_teaches(teacher_model, args, task, tokenizer, train_dataset, eval_dataset, student) -> TeacherSource | None:
    """Several teachers or the student itself (``config``'s "who teaches" section), else None."""
    if getattr(args, "self_teacher", None):
        if teacher_model is not None:
            raise ValueError(f"self_teacher={args.self_teacher!r}: the student teaches itself; pass no teacher_model")
        if student is None:
            raise ValueError(f"self_teacher={args.self_teacher!r} needs the student model")
        if args.self_teacher in ("frozen", "ema"):
            decay = 1.0 if args.self_teacher == "frozen" else args.ema_decay
            return EmaTeacher(student, decay=decay, name=args.self_teacher)
        return OwnWeightsTeacher(student, adapters_disabled=args.self_teacher == "lora_base")
    if not getattr(args, "teachers", None):
        return None
    models = list(teacher_model) if isinstance(teacher_model, list | tuple) else None
    if teacher_model is not None and (models is None or len(models) != len(args.teachers)):
        raise ValueError(
            f"teachers lists {len(args.teachers)} teachers; pass teacher_model=None (each is loaded from its entry) "
            f"or a list of {len(args.teachers)} models in the same order"
        )
    members = []
    for i, spec in enumerate(args.teachers):
        if spec["logits_path"]:
            # teacher_model_name_or_path is unset with teachers: each store is checked for its rows, not its id.
            expected = expected_store_fingerprint(args, task, tokenizer, train_dataset, eval_dataset)
            source = CachedTeacher(spec["logits_path"], expected=expected)
        else:
            model = models[i] if models else load_model(spec["path"], task, dtype=args.teacher_dtype)
            source = LiveTeacher(model, name=spec["path"])
        members.append((spec["name"], source, spec["weight"]))
    vocab = len(tokenizer) if tokenizer is not None and task != "sequence_classification" else None
    return MultiTeacher(
        members,
        mode=args.multi_teacher,
        routed=args.teacher_column is not None,
        temperature=args.temperature,
        vocab_size=vocab,
    )


def _single_teacher(teacher_model, args, task, tokenizer, train_dataset, eval_dataset) -> TeacherSource:
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
