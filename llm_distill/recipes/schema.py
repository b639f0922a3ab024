"""YAML recipes: top-level keys are DistillationConfig fields; `teacher`, `student`, `dataset`, `cache`, `generate`
are blocks.

A recipe is read, CLI overrides (``--key value`` or ``--block.key value``) are applied on top, and every key is
checked against the real schema so a typo fails before any model is loaded.
"""

from __future__ import annotations

import functools
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..checks import check_types, reject_unknown_keys
from ..config import DistillationConfig
from ..data import DataConfig
from ..student import apply_lora, student_from_teacher
from ..teacher.store import cache_logits

BLOCKS = ("teacher", "student", "dataset", "cache", "generate", "stages")
TEACHER_KEYS = {
    "model_name_or_path": "teacher_model_name_or_path",
    "dtype": "teacher_dtype",
    "logits_path": "teacher_logits_path",
}
STUDENT_SPEC = {
    "model_name_or_path": str,
    "from_teacher": dict,
    "config_overrides": dict,
    "num_labels": int,
    "dtype": str,
    "peft": dict,
    "attn_implementation": str,
}
CACHE_KEYS = ("output_dir", "k", "mode", "num_samples", "batch_size", "shard_size", "dtype", "seed")


def config_field_names() -> list[str]:
    return [f.name for f in fields(DistillationConfig) if f.init]


@functools.cache
def config_hints() -> dict:
    return typing.get_type_hints(DistillationConfig)


def _parameters(function, skip: tuple[str, ...] = ()) -> dict:
    """Keyword parameters of ``function`` and their type hints: a block's keys are the arguments it is passed to."""
    hints = typing.get_type_hints(function)
    return {name: hints.get(name) for name in list(hints) if name not in ("return", *skip)}


@functools.cache
def block_specs() -> dict[str, dict]:
    """The keys (and their types) of every nested block, read from the functions they are passed to."""
    return {
        "student.from_teacher": {
            **_parameters(
                student_from_teacher, skip=("teacher_model", "model_class", "attn_implementation", "config_overrides")
            ),
            "init_from": str,
            "tokenizer": str,
        },
        "student.peft": {**_parameters(apply_lora, skip=("model",)), "merge": bool},
        "cache": {key: hint for key, hint in _parameters(cache_logits).items() if key in CACHE_KEYS}
        | {"output_dir": str},
    }


def check_block(values, where: str, spec: dict) -> None:
    """A nested block must be a mapping of known keys with values of the right type."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}={values!r} is not accepted; expected a mapping of keys to values")
    reject_unknown_keys(values, spec, where=where)
    check_types(values, spec, where=where)


def check_config_values(config: dict, where: str = "") -> None:
    check_types(config, config_hints(), where=where)


@dataclass
class Recipe:
    config: dict
    student: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    generate: dict = field(default_factory=dict)  # `llm-distill generate`: output_dir, batch_size, shard_size
    stages: list[dict] = field(default_factory=list)
    source: str | None = None

    def training_args(self) -> DistillationConfig:
        return DistillationConfig(**self.config)


FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(value):
    """YAML 1.1 reads `1e-4` (no dot) as a string; every user means the number."""
    if isinstance(value, str) and FLOAT.match(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _parse_value(text: str):
    # YAML typing for CLI values: 3 -> int, 1e-4 -> float, true -> bool, [1, 2] -> list, anything else -> str.
    if text.lower() in ("yes", "no", "on", "off", "y", "n"):
        return text  # YAML 1.1 would make these booleans; `--eval_strategy no` means the string
    try:
        return _numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text  # not YAML (e.g. an unbalanced bracket in a path): the string as typed


def parse_overrides(argv: list[str]) -> dict:
    """``['--lr', '1e-4', '--dataset.max_length=128']`` -> ``{'lr': 1e-4, 'dataset': {'max_length': 128}}``."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # a bare flag
            else:
                i += 1
                value = argv[i]
        key = key.replace("-", "_")
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = _parse_value(value)
        i += 1
    return out


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for k, v in override.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def read_yaml(path: str | Path) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist (relative paths are from {os.getcwd()})")
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def check_student_block(student: dict) -> None:
    check_block(student, "student", STUDENT_SPEC)
    if student.get("model_name_or_path") and student.get("from_teacher") is not None:
        raise ValueError(
            f"student.model_name_or_path={student['model_name_or_path']!r} and student.from_teacher are both set; "
            "keep one: a checkpoint to load, or a shape to build from the teacher (from_teacher.init_from names "
            "another checkpoint of the teacher's family to copy layers from)"
        )
    specs = block_specs()
    if student.get("from_teacher") is not None:
        check_block(student["from_teacher"], "student.from_teacher", specs["student.from_teacher"])
        if "num_layers" not in student["from_teacher"]:
            raise ValueError("student.from_teacher needs num_layers (the student's number of blocks)")
    if student.get("peft") is not None:
        check_block(student["peft"], "student.peft", specs["student.peft"])


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    raw = read_yaml(path) if path is not None else {}
    raw = _merge(_numbers(raw), parse_overrides(overrides or []))
    reject_unknown_keys(raw, config_field_names() + list(BLOCKS), where=f"recipe {path or '(command line)'}")

    config = {k: v for k, v in raw.items() if k not in BLOCKS}
    teacher = raw.get("teacher") or {}
    reject_unknown_keys(teacher, TEACHER_KEYS, where="teacher")
    for key, field_name in TEACHER_KEYS.items():
        if key in teacher:
            if field_name in config:
                raise ValueError(f"teacher.{key} and {field_name} are both set; keep one")
            config[field_name] = teacher[key]
    check_config_values(config)
    student = raw.get("student") or {}
    check_student_block(student)
    dataset = raw.get("dataset") or {}
    check_block(dataset, "dataset", typing.get_type_hints(DataConfig))
    cache = raw.get("cache") or {}
    check_block(cache, "cache", block_specs()["cache"])
    stages = raw.get("stages") or []
    if not isinstance(stages, list):
        raise ValueError(f"stages={stages!r} is not accepted; expected a list of mappings, each with a name")
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or "name" not in stage:
            raise ValueError(f"stages[{i}] must be a mapping with a name and the keys it overrides")
        overrides_of_stage = {k: v for k, v in stage.items() if k != "name"}
        reject_unknown_keys(overrides_of_stage, config_field_names() + ["dataset"], where=f"stages[{i}]")
        stage_config = {**config, **{k: v for k, v in overrides_of_stage.items() if k != "dataset"}}
        check_config_values(stage_config, where=f"stages[{i}]")
        check_block({**dataset, **stage.get("dataset", {})}, f"stages[{i}].dataset", typing.get_type_hints(DataConfig))
        DistillationConfig(**stage_config)  # every stage must be a valid config on its own, before any training
    return Recipe(
        config=config,
        student=student,
        dataset=dataset,
        cache=cache,
        generate=raw.get("generate") or {},
        stages=stages,
        source=str(path) if path else None,
    )


def stage_recipes(recipe: Recipe) -> list[tuple[str, Recipe]]:
    """One recipe per stage; stage k+1 starts from the student that stage k saved (TinyBERT's two stages)."""
    if not recipe.stages:
        return [("", recipe)]
    out, previous = [], None
    root = recipe.config.get("output_dir", "runs/distill")
    for stage in recipe.stages:
        name = stage["name"]
        config = {
            **recipe.config,
            **{k: v for k, v in stage.items() if k not in ("name", "dataset")},
            "output_dir": os.path.join(root, name),
        }
        dataset = {**recipe.dataset, **stage.get("dataset", {})}
        student = (
            recipe.student
            if previous is None
            else {
                **{k: v for k, v in recipe.student.items() if k in ("peft", "attn_implementation")},
                "model_name_or_path": previous,
            }
        )
        out.append(
            (name, Recipe(config=config, student=student, dataset=dataset, cache=recipe.cache, source=recipe.source))
        )
        previous = config["output_dir"]
    return out
