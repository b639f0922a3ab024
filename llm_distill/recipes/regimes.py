"""Who teaches, at the recipe level: the data columns teacher sources read, several teachers' tokenizers, online
(co-trained) stages and born-again generations.

``run.py`` calls these through small hooks and hands in its own builders, so that this module needs nothing of it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace

from transformers import set_seed

from ..online import OnlineDistillationTrainer, co_training, mutual_learning
from ..tasks import load_model, load_tokenizer_of
from ..vocab import check_tokenizers
from .resume import resume_point
from .schema import Recipe

logger = logging.getLogger("llm_distill")
GENERATIONS_REPORT = "generations.json"


def teacher_columns(args) -> dict:
    """What ``build_datasets`` adds for the run's teacher sources (a context prompt, each row's teacher)."""
    columns: dict = {}
    if args.teacher_prompt:
        columns["teacher_prompt"] = args.teacher_prompt
    if args.teacher_column:
        columns.update(teacher_column=args.teacher_column, teacher_names=[t["name"] for t in args.teachers])
    return columns


def check_teacher_tokenizers(args, tokenizer) -> None:
    """Every live teacher of ``teachers`` must map tokens to the student's ids (they read the student's batch)."""
    for i, spec in enumerate(args.teachers or []):
        if spec["path"]:
            check_tokenizers(load_tokenizer_of(spec["path"], f"teachers[{i}].path"), tokenizer)


def first_live_teacher(args) -> str | None:
    """The first model path of ``teachers`` (several teachers share one tokenizer and, for shape, one family)."""
    return next((t["path"] for t in args.teachers or [] if t["path"]), None)


def train_online_stage(checked, build_student: Callable) -> dict:
    """Train a cohort (``online_distillation``): ``num_peers`` students (mutual) or the student and its teacher
    (co_train); every model is exported (the first at ``output_dir``, the others in ``output_dir/NAME``).

    ``checked``: the stage's pre-flight (``preflight.Checked``: tokenizer and tokenized data); ``build_student``: the
    run's builder, so that every peer is built like a distilled student."""
    recipe, args, task = checked.recipe, checked.args, checked.task
    if args.online_distillation == "co_train":
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype)
        set_seed(args.seed)
        models = {"student": build_student(recipe, args, task, teacher), "teacher": teacher}
        learns_from = co_training()
    else:
        # The teacher path, when given, only shapes the students (from_teacher); mutual learning has no teacher.
        from_teacher = recipe.student.get("from_teacher")
        needs_shape = from_teacher is not None and from_teacher.get("init_from") is None
        shape = load_model(args.teacher_model_name_or_path, task) if needs_shape else None
        models = {}
        for i in range(args.num_peers):
            set_seed(args.seed + i)  # distinct, reproducible fresh heads: peers must not start identical
            models[f"student_{i}"] = build_student(recipe, args, task, shape)
        learns_from = mutual_learning(list(models))
    trainer = OnlineDistillationTrainer(
        models,
        args,
        learns_from=learns_from,
        train_dataset=checked.train_dataset,
        eval_dataset=checked.eval_dataset,
        processing_class=checked.tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume_point(args, checked.output_state))
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate() if checked.eval_dataset is not None else {}
    if metrics:
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


def generation_recipe(recipe: Recipe, k: int, previous: str | None) -> Recipe:
    """Generation ``k`` (1-based): the same student block and data, in ``OUTPUT_DIR/genK``, taught by the recipe's
    own teacher (k = 1) or by generation k - 1's final student."""
    root = recipe.config.get("output_dir", "runs/distill")
    config = {**recipe.config, "output_dir": os.path.join(root, f"gen{k}"), "generations": 1}
    if previous is not None:
        for key in ("teachers", "teacher_column", "teacher_logits_path", "self_teacher", "teacher_prompt"):
            config.pop(key, None)
        config["teacher_model_name_or_path"] = previous
    return replace(recipe, config=config)


def final_dir(recipe: Recipe) -> str:
    """Where a recipe's finished student lies: its output_dir, or its last stage's."""
    root = recipe.config.get("output_dir", "runs/distill")
    return os.path.join(root, recipe.stages[-1]["name"]) if recipe.stages else root


def train_generations(recipe: Recipe, train: Callable[[Recipe], dict]) -> dict:
    """Born-again distillation (Furlanello et al., ICML 2018): ``generations`` students of the same shape in
    sequence, each teaching the next; each is exported to ``OUTPUT_DIR/genK`` and its evaluation metrics are written
    to ``OUTPUT_DIR/generations.json``. A finished generation is not trained again. Returns the last one's metrics."""
    n = recipe.training_args().generations
    shape = recipe.student.get("from_teacher")
    if shape is not None and not shape.get("init_from"):
        raise ValueError(
            f"generations={n}: student.from_teacher without init_from would start each generation from the previous "
            "one's layers; set student.from_teacher.init_from (or student.model_name_or_path) so that every "
            "generation starts alike"
        )
    root = recipe.config.get("output_dir", "runs/distill")
    report_path = os.path.join(root, GENERATIONS_REPORT)
    report = json.load(open(report_path)) if os.path.exists(report_path) else {"generations": []}
    done = {g["generation"]: g for g in report["generations"]}
    previous, metrics = None, {}
    for k in range(1, n + 1):
        stage = generation_recipe(recipe, k, previous)
        output = final_dir(stage)
        if k in done and os.path.exists(os.path.join(output, "trainer_state.json")):
            logger.warning("generation %d already finished in %s; skipping it", k, output)
            metrics = done[k]["eval"]
        else:
            logger.info("generation %d of %d -> %s (teacher: %s)", k, n, output, previous or "the recipe's")
            metrics = train(stage)
            done[k] = {
                "generation": k,
                "output_dir": output,
                "teacher": previous or stage.config.get("teacher_model_name_or_path"),
                "eval": metrics,
            }
            report["generations"] = [done[i] for i in sorted(done)]
            os.makedirs(root, exist_ok=True)
            with open(report_path, "w") as fh:
                json.dump(report, fh, indent=2)
        previous = output
    return metrics
