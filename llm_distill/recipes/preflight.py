"""Pre-flight: everything a run would refuse, checked before the first weight is read.

``preflight(recipe, verb)`` runs for ``train``, ``finetune``, ``cache-logits`` and ``check`` (which runs it and
nothing more). It reads settings, model *configs* (``config.json``; a model on the meta device gives module names),
tokenizers and the data, never weights, and refuses with one message that names the setting, the value and what would
be accepted. What it established (configs, tokenizer, tokenized datasets) is handed to the run, so nothing is read
twice.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch

from ..data import DataConfig, build_datasets
from ..data.aligned import check_aligned_data
from ..features import feature_distiller_for
from ..student import apply_config_overrides, student_config
from ..tasks import AUTO_CLASSES, load_tokenizer_of, model_config, task_for_data
from ..teacher.store import LogitStore, expected_store_fingerprint
from ..vocab import check_tokenizers, same_vocabulary, shared_vocab_size
from .outdir import check_output_dir
from .regimes import check_teacher_tokenizers, first_live_teacher, teacher_columns
from .schema import Recipe

logger = logging.getLogger("llm_distill")

VERBS = ("train", "finetune", "cache-logits", "generate", "score-data", "check")


@dataclass
class Checked:
    """What pre-flight established for one run (one stage)."""

    recipe: Recipe
    args: object  # DistillationConfig, with ``task`` resolved
    data: DataConfig
    task: str
    tokenizer: object
    # The teacher's own: when the student has another checkpoint (same ids), or with cross_tokenizer_loss (other ids).
    teacher_tokenizer: object | None
    teacher_config: object | None
    student_config: object | None
    train_dataset: object
    eval_dataset: object | None
    output_state: str = "fresh"  # "fresh" | "resume" | "finished" (train and finetune)


def student_checkpoint(recipe: Recipe) -> tuple[str | None, str | None]:
    """(checkpoint the student's weights and tokenizer come from when it is not the teacher, its setting)."""
    if recipe.student.get("model_name_or_path"):
        return recipe.student["model_name_or_path"], "student.model_name_or_path"
    init_from = (recipe.student.get("from_teacher") or {}).get("init_from")
    return (init_from, "student.from_teacher.init_from") if init_from else (None, None)


def resolve_student_config(recipe: Recipe, teacher_config, task: str):
    """The student's config from the recipe's student block, from configs alone."""
    spec = recipe.student
    overrides = spec.get("config_overrides")
    if spec.get("from_teacher") is not None:
        shape = dict(spec["from_teacher"])
        init_from = shape.pop("init_from", None)
        shape.pop("tokenizer", None)  # a transplanted tokenizer sets vocab_size once it is loaded
        source = model_config(init_from, "student.from_teacher.init_from") if init_from else teacher_config
        if source is None:
            raise ValueError(
                "student.from_teacher needs a teacher to shrink (teacher_model_name_or_path) or "
                "student.from_teacher.init_from (a checkpoint of the teacher's family)"
            )
        config, _ = student_config(source, **shape, config_overrides=overrides)
    elif spec.get("model_name_or_path"):
        config = apply_config_overrides(
            model_config(spec["model_name_or_path"], "student.model_name_or_path"), overrides
        )
    else:
        raise ValueError("the student block needs model_name_or_path (a checkpoint) or from_teacher (a shape)")
    if task == "sequence_classification" and spec.get("num_labels") is not None:
        config.num_labels = spec["num_labels"]
    return config


def module_names(config, task: str) -> list[str]:
    """Module names of a model of ``config``, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = AUTO_CLASSES[task].from_config(config)
    return [name for name, _ in model.named_modules() if name]


def check_lora_targets(peft: dict, config, task: str) -> None:
    """Every LoRA target must match a module: peft drops a misspelt one silently when another matches."""
    names = module_names(config, task)
    for key in ("target_modules", "modules_to_save"):
        targets = peft.get(key)
        if targets is None or targets == "all-linear":
            continue
        if isinstance(targets, str):  # peft reads a string as a regular expression over the full module names
            if not any(re.fullmatch(targets, n) for n in names):
                raise ValueError(f"student.peft.{key}={targets!r} matches no module of the student")
            continue
        for target in targets:
            if not any(n == target or n.endswith("." + target) for n in names):
                leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
                raise ValueError(
                    f"student.peft.{key} entry {target!r} matches no module of the student; module names end in "
                    f"{', '.join(leaves[:40])}"
                )


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_fused_request(args, task: str, peft: dict | None) -> None:
    """An explicit ``loss_chunk_size`` asks for the fused loss: refuse where the trainer could not honour it."""
    chunk = args.loss_chunk_size
    if chunk == "auto" or chunk == 0:
        return
    if task != "causal_lm":
        raise ValueError(f"loss_chunk_size={chunk} asks for the fused loss, which applies to causal LMs, not {task}")
    peft = peft or {}
    names = [n for key in ("target_modules", "modules_to_save") for n in _as_list(peft.get(key))]
    if any(n == "lm_head" or n.endswith(".lm_head") for n in names):
        raise ValueError(
            f"loss_chunk_size={chunk} asks for the fused loss, which applies the lm_head weight itself; LoRA or "
            "modules_to_save on lm_head replace it: set loss_chunk_size=0 (or 'auto')"
        )
    if args.fsdp or getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ValueError(
            f"loss_chunk_size={chunk} asks for the fused loss, which applies the lm_head weight outside the model's "
            "forward; FSDP and DeepSpeed shard it: set loss_chunk_size=0 (or 'auto')"
        )


def check_positions(data: DataConfig, configs: dict) -> None:
    """Rows are at most ``dataset.max_length`` tokens; a model with fewer positions would crash (BERT) or run past
    what it was trained on (rotary Llama) without a word."""
    for role, config in configs.items():
        limit = getattr(config, "max_position_embeddings", None)
        if config is not None and limit is not None and data.max_length > limit:
            raise ValueError(
                f"dataset.max_length={data.max_length} is longer than the {role}'s max_position_embeddings={limit}; "
                f"set dataset.max_length <= {limit}"
            )


def check_labels(train_dataset, config, task: str) -> None:
    if task != "sequence_classification" or config is None:
        return
    labels = train_dataset["labels"]
    num_labels = int(getattr(config, "num_labels", 2))
    bad = sorted({int(x) for x in labels if not 0 <= int(x) < num_labels})
    if bad:
        raise ValueError(
            f"the dataset's labels include {bad[:5]}, outside 0..{num_labels - 1} for num_labels={num_labels}; set "
            "student.num_labels (and fine-tune the teacher with as many labels)"
        )


def recipe_task(args, recipe: Recipe) -> str:
    """The task the run distils: ``task`` when set, else what the dataset kind trains."""
    if args.task != "auto":
        return args.task
    return task_for_data(recipe.dataset.get("task", "text"))


def preflight(recipe: Recipe, verb: str, *, previous: Checked | None = None) -> Checked:
    """Check a recipe for ``verb`` without loading weights; returns what the run needs (see ``Checked``).

    ``previous``: the pre-flight of the stage before, whose output is this stage's student (not written yet when all
    stages are checked up front: its config and tokenizer stand in).
    """
    if verb not in VERBS:
        raise ValueError(f"pre-flight has no verb {verb!r}; expected one of {', '.join(VERBS)}")
    args = recipe.training_args()
    args.check_precision()
    if not recipe.dataset.get("path"):
        raise ValueError("dataset.path is required: the file, saved folder or hub dataset to train on")
    data = DataConfig.from_dict(recipe.dataset)
    task = recipe_task(args, recipe)
    args.task = task
    live = bool(args.teacher_model_name_or_path) and not args.teacher_logits_path
    others = args.teachers or args.self_teacher or args.online_distillation  # sources that need no single teacher
    if verb in ("train", "check") and not (args.teacher_model_name_or_path or args.teacher_logits_path or others):
        raise ValueError(
            "no teacher: set teacher_model_name_or_path (a live teacher) or teacher_logits_path (a logit store)"
        )
    if verb == "cache-logits":
        check_cache_settings(recipe, args)
    if verb in ("generate", "score-data") and not args.teacher_model_name_or_path:
        raise ValueError(f"{verb} runs the live teacher: set teacher_model_name_or_path")

    teacher_config = None
    if args.teacher_model_name_or_path:
        teacher_config = model_config(args.teacher_model_name_or_path, "teacher_model_name_or_path")
    for i, spec in enumerate(args.teachers or []):
        if spec["path"]:
            config = model_config(spec["path"], f"teachers[{i}].path")
            teacher_config = teacher_config or config  # the first live teacher shapes the student
    checkpoint, field = student_checkpoint(recipe)
    transplant = (recipe.student.get("from_teacher") or {}).get("tokenizer")
    from_previous = previous is not None and checkpoint == previous.args.output_dir and not os.path.isdir(checkpoint)
    student_cfg = previous.student_config if from_previous else resolve_student_config(recipe, teacher_config, task)

    if from_previous:
        tokenizer = previous.tokenizer
    elif checkpoint:
        tokenizer = load_tokenizer_of(checkpoint, field)
    elif transplant:
        tokenizer = load_tokenizer_of(transplant, "student.from_teacher.tokenizer")
    elif args.teacher_model_name_or_path:
        tokenizer = load_tokenizer_of(args.teacher_model_name_or_path, "teacher_model_name_or_path")
    elif first_live_teacher(args):
        tokenizer = load_tokenizer_of(first_live_teacher(args), "teachers[0].path")
    else:
        raise ValueError(
            "no tokenizer source: set student.model_name_or_path, student.from_teacher.init_from or "
            "teacher_model_name_or_path"
        )
    if transplant and not from_previous:
        student_cfg.vocab_size = len(tokenizer)
    teacher_tokenizer = cross_tokenizer = None
    if args.cross_tokenizer_loss and verb != "finetune":
        cross_tokenizer = teacher_tokenizer = cross_teacher_tokenizer(args, tokenizer, data, verb, teacher_config)
    elif (checkpoint or transplant) and args.teacher_model_name_or_path and verb != "finetune":
        # The teacher reads ids made by the student's tokenizer: both must map every token to the same id.
        teacher_tokenizer = load_tokenizer_of(args.teacher_model_name_or_path, "teacher_model_name_or_path")
        check_tokenizers(teacher_tokenizer, tokenizer)

    if args.teachers:
        check_teacher_tokenizers(args, tokenizer)
    # The teacher's outputs meet the student's ids (finetune reads no teacher output; a cross-tokenizer run maps them).
    if (live or verb in ("cache-logits", "generate", "score-data")) and verb != "finetune" and cross_tokenizer is None:
        shared_vocab_size(_output_width(teacher_config, task), student_cfg, tokenizer, task)
    if live and verb != "finetune":
        feature_distiller_for(args, student_cfg, teacher_config, task=task)
    peft = recipe.student.get("peft")
    if peft:
        check_lora_targets(peft, student_cfg, task)
    check_fused_request(args, task, peft)
    check_positions(data, {"student": student_cfg, "teacher": teacher_config})

    with args.main_process_first(desc="tokenize"):
        train_ds, eval_ds = build_datasets(data, tokenizer, teacher_tokenizer=cross_tokenizer, **teacher_columns(args))
    check_labels(train_ds, student_cfg, task)
    if verb in ("train", "check") and args.teacher_logits_path:
        expected = expected_store_fingerprint(args, task, tokenizer, train_ds, eval_ds)
        LogitStore(
            args.teacher_logits_path, expected=expected, name=f"teacher_logits_path={args.teacher_logits_path!r}"
        )

    state = "fresh"
    if verb in ("train", "finetune", "check"):
        state = check_output_dir(args, recipe)
    return Checked(recipe, args, data, task, tokenizer, teacher_tokenizer, teacher_config, student_cfg, train_ds,
                   eval_ds, state)  # fmt: skip


def cross_teacher_tokenizer(args, tokenizer, data: DataConfig, verb: str, teacher_config):
    """The teacher's tokenizer for ``cross_tokenizer_loss`` when it differs from the student's, else None (one
    vocabulary: the ordinary loss runs)."""
    name, field = args.teacher_tokenizer, "teacher_tokenizer"
    if name is None:
        name, field = args.teacher_model_name_or_path, "teacher_model_name_or_path"
    teacher_tokenizer = load_tokenizer_of(name, field)
    if same_vocabulary(teacher_tokenizer, tokenizer):
        logger.info("cross_tokenizer_loss: %s=%r has the student's vocabulary; the ordinary loss runs", field, name)
        return None
    if verb in ("cache-logits", "generate", "score-data"):
        raise ValueError(
            f"cross_tokenizer_loss={args.cross_tokenizer_loss!r}: `llm-distill {verb}` writes teacher outputs for the "
            "student's tokens, which a teacher with another tokenizer does not read; train with the live teacher"
        )
    rows = getattr(teacher_config, "vocab_size", None)
    if rows is not None and len(teacher_tokenizer) > rows:
        raise ValueError(
            f"{field}={name!r} has {len(teacher_tokenizer)} tokens but the teacher's output vocabulary has {rows}; "
            "teacher_tokenizer must be the tokenizer the teacher was trained with"
        )
    check_aligned_data(data)
    return teacher_tokenizer


def _output_width(config, task: str) -> int | None:
    if config is None:
        return None
    return getattr(config, "num_labels" if task == "sequence_classification" else "vocab_size", None)


def check_cache_settings(recipe: Recipe, args) -> None:
    settings = recipe.cache
    if not (settings.get("output_dir") or args.teacher_logits_path):
        raise ValueError("set cache.output_dir (or teacher_logits_path) to say where the store goes")
    if not args.teacher_model_name_or_path:
        raise ValueError("cache-logits runs the live teacher: set teacher_model_name_or_path")
    if "k" not in settings and settings.get("mode", "topk") == "topk":
        raise ValueError("set cache.k, the number of teacher log-probabilities kept per token (e.g. 64)")
