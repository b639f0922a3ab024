"""Plain supervised fine-tuning with the same recipes and data: teachers to distil from, and no-teacher baselines.

Uses `transformers.Trainer` with the model's own cross-entropy; a recipe for it has the `dataset` and `student`
blocks (the model to fine-tune) and TrainingArguments keys; the teacher, when named, only shapes the student.
"""

from __future__ import annotations

import logging

from transformers import Trainer

from ..data import DistillationCollator
from ..tasks import load_model
from .outdir import start_run
from .preflight import preflight
from .resume import resume_point
from .run import initial_student
from .schema import Recipe

logger = logging.getLogger("llm_distill")


def accuracy_metrics(eval_pred) -> dict:
    logits, labels = eval_pred
    predictions = logits.argmax(-1)
    return {"accuracy": float((predictions == labels).mean())}


def finetune(recipe: Recipe) -> dict:
    """Fine-tune ``recipe.student`` on ``recipe.dataset``; returns the final evaluation metrics.

    The student and tokenizer are built by the same functions as a distillation run's, so that a baseline is built
    exactly like the student it is compared with.
    """
    checked = preflight(recipe, "finetune")
    args, task = checked.args, checked.task
    if checked.output_state == "finished":
        logger.warning(
            "%s already finished; nothing to do (--overwrite_output_dir true trains it again)", args.output_dir
        )
        return {}
    start_run(args, recipe)
    teacher = None
    from_teacher = recipe.student.get("from_teacher")
    if from_teacher is not None and not from_teacher.get("init_from"):
        teacher = load_model(args.teacher_model_name_or_path, task)
    model = initial_student(recipe, args, task, teacher)
    train_ds = checked.train_dataset.remove_columns("sample_id")
    eval_ds = checked.eval_dataset.remove_columns("sample_id") if checked.eval_dataset is not None else None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=checked.tokenizer,
        data_collator=DistillationCollator(checked.tokenizer),
        compute_metrics=accuracy_metrics if task == "sequence_classification" else None,
    )
    trainer.train(resume_from_checkpoint=resume_point(args, checked.output_state))
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate() if eval_ds is not None else {}
    if metrics:
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics
