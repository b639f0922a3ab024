"""Plain supervised fine-tuning with the same recipes and data: teachers to distil from, and no-teacher baselines.

Uses `transformers.Trainer` with the model's own cross-entropy; a recipe for it has the `dataset` and `student`
blocks (the model to fine-tune) and TrainingArguments keys. Distillation-only keys are accepted but unused.
"""

from __future__ import annotations

from transformers import Trainer

from ..data import DataConfig, DistillationCollator, build_datasets
from ..tasks import load_model, task_for_data
from .resume import resume_point
from .run import build_student, load_tokenizer
from .schema import Recipe


def accuracy_metrics(eval_pred) -> dict:
    logits, labels = eval_pred
    predictions = logits.argmax(-1)
    return {"accuracy": float((predictions == labels).mean())}


def finetune(recipe: Recipe) -> dict:
    """Fine-tune ``recipe.student`` on ``recipe.dataset``; returns the final evaluation metrics.

    The student and tokenizer are built by the same functions as a distillation run's, so that a baseline is built
    exactly like the student it is compared with.
    """
    args = recipe.training_args()
    data_cfg = DataConfig.from_dict(recipe.dataset)
    task = task_for_data(data_cfg.task)
    args.task = task
    tokenizer = load_tokenizer(recipe, args)
    teacher = None
    from_teacher = recipe.student.get("from_teacher")
    if from_teacher is not None and not from_teacher.get("init_from"):
        teacher = load_model(args.teacher_model_name_or_path, task)
    model = build_student(recipe, args, task, teacher)
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data_cfg, tokenizer)
    train_ds = train_ds.remove_columns("sample_id")
    eval_ds = eval_ds.remove_columns("sample_id") if eval_ds is not None else None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=DistillationCollator(tokenizer),
        compute_metrics=accuracy_metrics if task == "sequence_classification" else None,
    )
    trainer.train(resume_from_checkpoint=resume_point(args))
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate() if eval_ds is not None else {}
    if metrics:
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics
