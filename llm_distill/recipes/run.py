"""A recipe, run: tokenizer, teacher, student and data built from the recipe's blocks, then training (every stage)
or the teacher cached into a logit store. The CLI parses and dispatches; the work is done here."""

from __future__ import annotations

import logging
import os

from transformers import set_seed

from ..checks import reject_unknown_keys
from ..data import DataConfig, DistillationCollator, build_datasets
from ..student import apply_lora, save_merged, student_from_teacher
from ..tasks import load_model, task_for_data
from ..teacher.store import cache_logits, store_dataset
from ..trainer import DistillationTrainer
from ..vocab import check_tokenizers
from .resume import resume_point
from .schema import Recipe, stage_recipes
from .select import select_samples

logger = logging.getLogger("llm_distill")

CACHE_KEYS = ("output_dir", "k", "mode", "num_samples", "batch_size", "shard_size", "dtype", "seed")


def recipe_task(args, recipe: Recipe) -> str:
    """The task the run distils: ``task`` when set, else what the dataset kind trains."""
    if args.task != "auto":
        return args.task
    return task_for_data(recipe.dataset.get("task", "text"))


def student_checkpoint(recipe: Recipe) -> str | None:
    """The checkpoint the student's weights (and so its tokenizer) come from, when it is not the teacher."""
    return recipe.student.get("model_name_or_path") or (recipe.student.get("from_teacher") or {}).get("init_from")


def load_tokenizer(recipe: Recipe, args):
    """The tokenizer of the student's own checkpoint, else the teacher's."""
    from transformers import AutoTokenizer

    source = student_checkpoint(recipe) or args.teacher_model_name_or_path
    if source is None:
        raise ValueError(
            "no tokenizer source: set student.model_name_or_path, student.from_teacher.init_from or "
            "teacher_model_name_or_path"
        )
    return AutoTokenizer.from_pretrained(source)


def teacher_tokenizer(recipe: Recipe, args, tokenizer):
    """The teacher's tokenizer when the student has its own checkpoint, after checking that both map every token to
    the same id (the teacher reads ids made by the student's tokenizer); ``None`` when they are one and the same."""
    if not (student_checkpoint(recipe) and args.teacher_model_name_or_path):
        return None
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(args.teacher_model_name_or_path)
    check_tokenizers(loaded, tokenizer)
    return loaded


def build_student(recipe: Recipe, args, task: str, teacher):
    """The student the recipe's ``student:`` block describes (shrunk from the teacher, or loaded), with LoRA."""
    # Seeded like the run: whatever is randomly initialised (a narrower student, LoRA) is the same in every run of
    # the recipe, so that students trained with different signals start from the same weights.
    if getattr(args, "seed", None) is not None:
        set_seed(args.seed)
    spec = dict(recipe.student)
    peft_spec = spec.pop("peft", None)
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
        source = load_model(init_from, task, **extra) if init_from else teacher
        if source is None:
            raise ValueError(
                "student.from_teacher needs a live teacher (teacher_model_name_or_path) or from_teacher.init_from"
            )
        student = student_from_teacher(source, **shape)
        if "attn_implementation" in extra:
            student.set_attn_implementation(extra["attn_implementation"])
    elif spec.get("model_name_or_path"):
        student = load_model(spec["model_name_or_path"], task, dtype=spec.get("dtype", "auto"), **extra)
    else:
        raise ValueError("the student block needs model_name_or_path or from_teacher")
    if peft_spec:
        student = apply_lora(student, **{k: v for k, v in peft_spec.items() if k != "merge"})
    return student


def train(recipe: Recipe) -> None:
    """Train every stage of ``recipe`` in order; a finished stage (its ``trainer_state.json`` exists) is skipped."""
    for name, stage in stage_recipes(recipe):
        output_dir = stage.config["output_dir"]
        if name and os.path.exists(os.path.join(output_dir, "trainer_state.json")):
            logger.warning("stage %s already finished in %s; skipping it", name, output_dir)
            continue
        if name:
            logger.info("stage %s -> %s", name, output_dir)
        train_stage(stage)


def train_stage(recipe: Recipe) -> dict:
    """Train one recipe (one stage) end to end; returns the final evaluation metrics (empty without eval data)."""
    args = recipe.training_args()  # validates every field before anything heavy is loaded
    data_cfg = DataConfig.from_dict(recipe.dataset)
    task = recipe_task(args, recipe)
    args.task = task

    live = bool(args.teacher_model_name_or_path) and not args.teacher_logits_path
    tokenizer = load_tokenizer(recipe, args)
    # Refuses a mismatch before anything heavy is loaded; a logit store is checked by its own fingerprint instead.
    teacher_tok = teacher_tokenizer(recipe, args, tokenizer) if live else None
    teacher = None
    if args.teacher_model_name_or_path and (live or recipe.student.get("from_teacher") is not None):
        attn = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype, **attn)
    student = build_student(recipe, args, task, teacher)
    scorer = teacher  # sample-level data selection scores with it (and with the initial student) before training
    if not live:
        teacher = None  # it only shaped the student; targets come from the logit store
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data_cfg, tokenizer)
    train_ds = select_samples(
        args, task, train_ds, tokenizer, max_length=data_cfg.max_length, teacher=scorer, reference=student
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        teacher_processing_class=teacher_tok,
    )
    trainer.train(resume_from_checkpoint=resume_point(args))
    trainer.save_model(args.output_dir)
    if (recipe.student.get("peft") or {}).get("merge"):
        merged_dir = save_merged(trainer, os.path.join(args.output_dir, "merged"))
        logger.info("merged LoRA student written to %s", merged_dir)
    metrics = {}
    if eval_ds is not None:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    return metrics


def cache(recipe: Recipe):
    """Run the live teacher once over the recipe's train (+ eval) rows and write a logit store; returns its path."""
    args = recipe.training_args()
    reject_unknown_keys(recipe.cache, CACHE_KEYS, where="cache")
    settings = dict(recipe.cache)
    output_dir = settings.pop("output_dir", None) or args.teacher_logits_path
    if not output_dir:
        raise ValueError("set cache.output_dir (or teacher_logits_path) to say where the store goes")
    if not args.teacher_model_name_or_path:
        raise ValueError("cache-logits runs the live teacher: set teacher_model_name_or_path")
    if "k" not in settings and settings.get("mode", "topk") == "topk":
        raise ValueError("set cache.k, the number of teacher log-probabilities kept per token (e.g. 64)")
    data_cfg = DataConfig.from_dict(recipe.dataset)
    task = recipe_task(args, recipe)
    tokenizer = load_tokenizer(recipe, args)
    teacher_tokenizer(recipe, args, tokenizer)  # for its check: the teacher will read this tokenizer's ids
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data_cfg, tokenizer)
    teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype)
    # The store is written for the rows training will read: the same sample-level selection, if any.
    train_ds = select_samples(
        args,
        task,
        train_ds,
        tokenizer,
        max_length=data_cfg.max_length,
        teacher=teacher,
        reference=lambda: build_student(recipe, args, task, teacher),
    )
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.use_cpu)
    settings.setdefault("k", 0)
    return cache_logits(
        teacher,
        store_dataset(train_ds, eval_ds),
        DistillationCollator(tokenizer),
        output_dir=output_dir,
        temperature=args.temperature,
        task=task,
        teacher_id=args.teacher_model_name_or_path,
        tokenizer=tokenizer,
        max_length=data_cfg.max_length,
        accelerator=accelerator,
        **settings,
    )
