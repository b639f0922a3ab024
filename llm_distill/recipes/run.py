"""A recipe, run: pre-flight first (``preflight.py``: nothing heavy is loaded until every check passed), then the
teacher and the student, then training (every stage) or the teacher cached into a logit store. The CLI parses and
dispatches; the work is done here."""

from __future__ import annotations

import logging
import os

from transformers import set_seed

from ..data import DistillationCollator
from ..student import apply_lora, save_merged, student_from_teacher
from ..tasks import load_model, load_tokenizer_of
from ..teacher.store import cache_logits, store_dataset
from ..trainer import DistillationTrainer
from ..vocab import transplant_tokenizer
from .outdir import start_run
from .preflight import Checked, preflight
from .regimes import first_live_teacher, train_generations, train_online_stage
from .resume import resume_point
from .schema import Recipe, stage_recipes
from .select import select_samples

logger = logging.getLogger("llm_distill")


def build_student(recipe: Recipe, args, task: str, teacher):
    """The student the recipe's ``student:`` block describes (shrunk from the teacher, or loaded), with LoRA.

    Call ``set_seed`` first: a randomly initialised student (or LoRA adapter) draws from the global generator.
    """
    spec = dict(recipe.student)
    peft_spec = spec.pop("peft", None)
    overrides = spec.get("config_overrides") or {}
    extra = {}
    if spec.get("num_labels") is not None:
        extra["num_labels"] = spec["num_labels"]
    if spec.get("attn_implementation"):
        extra["attn_implementation"] = spec["attn_implementation"]
    elif args.attention_weight > 0:
        extra["attn_implementation"] = "eager"  # SDPA returns no attention maps
    if spec.get("from_teacher") is not None:
        shape = dict(spec["from_teacher"])
        # init_from: take the layers from another checkpoint of the teacher's family, typically the pretrained one
        # the teacher was fine-tuned from, so that a no-teacher baseline does not inherit the teacher's task.
        init_from = shape.pop("init_from", None)
        new_tokenizer = shape.pop("tokenizer", None)
        source = load_model(init_from, task, **extra) if init_from else teacher
        if source is None:
            raise ValueError(
                "student.from_teacher needs a live teacher (teacher_model_name_or_path) or from_teacher.init_from"
            )
        student = student_from_teacher(source, **shape, config_overrides=overrides)
        if new_tokenizer:
            # The student keeps the teacher's layers and gets another tokenizer (vocab.transplant).
            source_name = init_from or args.teacher_model_name_or_path
            transplant_tokenizer(
                student,
                load_tokenizer_of(new_tokenizer, "student.from_teacher.tokenizer"),
                load_tokenizer_of(source_name, "student.from_teacher.init_from" if init_from else "teacher"),
            )
        if "attn_implementation" in extra:
            student.set_attn_implementation(extra["attn_implementation"])
    elif spec.get("model_name_or_path"):
        dtype = spec.get("dtype", "auto")
        student = load_model(spec["model_name_or_path"], task, dtype=dtype, **{**overrides, **extra})
    else:
        raise ValueError("the student block needs model_name_or_path or from_teacher")
    if peft_spec:
        student = apply_lora(student, **{k: v for k, v in peft_spec.items() if k != "merge"})
    return student


def initial_student(recipe: Recipe, args, task: str, teacher):
    """The run's student as it starts: seeded first, so that a random init (a narrower student, LoRA adapters) does
    not depend on what was loaded before it, and is the same in every run of the recipe."""
    set_seed(args.seed)
    return build_student(recipe, args, task, teacher)


def check_stages(recipe: Recipe, verb: str) -> list[tuple[str, Checked]]:
    """Pre-flight of every stage, up front: a later stage's mistake is found before the first stage trains."""
    checked, previous = [], None
    for name, stage in stage_recipes(recipe):
        previous = preflight(stage, verb, previous=previous)
        checked.append((name, previous))
    return checked


def train(recipe: Recipe) -> dict:
    """Train every stage of ``recipe`` in order; a finished stage is skipped. Returns the last trained stage's
    evaluation metrics (empty when it was skipped or has no eval data). ``generations > 1`` trains that many
    born-again students in sequence (``recipes.regimes.train_generations``)."""
    if recipe.training_args().generations > 1:
        return train_generations(recipe, train)
    metrics: dict = {}
    stages = check_stages(recipe, "train")
    for i, (name, checked) in enumerate(stages):
        if i > 0:  # this stage's student is the previous stage's output, which exists only now
            checked = preflight(checked.recipe, "train", previous=stages[i - 1][1])
        where = f"stage {name} ({checked.args.output_dir})" if name else checked.args.output_dir
        if checked.output_state == "finished":
            logger.warning("%s already finished; nothing to do (--overwrite_output_dir true trains it again)", where)
            continue
        if name:
            logger.info("stage %s -> %s", name, checked.args.output_dir)
        metrics = train_stage(checked)
    return metrics


def train_stage(checked: Checked) -> dict:
    """Train one checked recipe (one stage) end to end; returns the final evaluation metrics (empty without eval)."""
    recipe, args, task = checked.recipe, checked.args, checked.task
    start_run(args, recipe)
    if args.online_distillation:
        return train_online_stage(checked, build_student)
    live = bool(args.teacher_model_name_or_path) and not args.teacher_logits_path
    teacher = None
    if args.teacher_model_name_or_path and (live or recipe.student.get("from_teacher") is not None):
        attn = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype, **attn)
    elif args.teachers and recipe.student.get("from_teacher") is not None and first_live_teacher(args):
        teacher = load_model(first_live_teacher(args), task, dtype=args.teacher_dtype)  # it shapes the student
    student = initial_student(recipe, args, task, teacher)
    scorer = teacher  # sample-level data selection scores with it (and with the initial student) before training
    if not live:
        teacher = None  # it only shaped the student; targets come from the logit store or the teachers list
    train_ds = select_samples(
        args, task, checked.train_dataset, checked.tokenizer, max_length=checked.data.max_length, teacher=scorer,
        reference=student,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_ds,
        eval_dataset=checked.eval_dataset,
        processing_class=checked.tokenizer,
        teacher_processing_class=checked.teacher_tokenizer,
    )
    trainer.train(resume_from_checkpoint=resume_point(args, checked.output_state))
    trainer.save_model(args.output_dir)
    if (recipe.student.get("peft") or {}).get("merge"):
        merged_dir = save_merged(trainer, os.path.join(args.output_dir, "merged"))
        logger.info("merged LoRA student written to %s", merged_dir)
    metrics = {}
    if checked.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


def cache(recipe: Recipe):
    """Run the live teacher once over the recipe's train (+ eval) rows and write a logit store; returns its path."""
    checked = preflight(recipe, "cache-logits")
    args, data = checked.args, checked.data
    settings = dict(recipe.cache)
    output_dir = settings.pop("output_dir", None) or args.teacher_logits_path
    teacher = load_model(args.teacher_model_name_or_path, checked.task, dtype=args.teacher_dtype)
    # The store is written for the rows training will read: the same sample-level selection, if any.
    train_ds = select_samples(
        args, checked.task, checked.train_dataset, checked.tokenizer, max_length=data.max_length, teacher=teacher,
        reference=lambda: initial_student(recipe, args, checked.task, teacher),
    )  # fmt: skip
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.use_cpu)
    settings.setdefault("k", 0)
    return cache_logits(
        teacher,
        store_dataset(train_ds, checked.eval_dataset),
        DistillationCollator(checked.tokenizer),
        output_dir=output_dir,
        temperature=args.temperature,
        task=checked.task,
        teacher_id=args.teacher_model_name_or_path,
        tokenizer=checked.tokenizer,
        max_length=data.max_length,
        accelerator=accelerator,
        vocab_size=len(checked.tokenizer),  # a padded embedding's extra rows are not tokens (token tasks)
        **settings,
    )
