"""YAML recipes: top-level keys are DistillationConfig fields; `teacher`, `student`, `dataset`, `cache`, `generate`
are blocks.

A recipe is read, CLI overrides (``--key value`` or ``--block.key value``) are applied on top, and every key is
checked against the real schema so a typo fails before any model is loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..checks import reject_unknown_keys
from ..config import DistillationConfig
from ..data import DataConfig

BLOCKS = ("teacher", "student", "dataset", "cache", "generate", "stages")
TEACHER_KEYS = {
    "model_name_or_path": "teacher_model_name_or_path",
    "dtype": "teacher_dtype",
    "logits_path": "teacher_logits_path",
}
STUDENT_KEYS = (
    "model_name_or_path",
    "from_teacher",
    "config_overrides",
    "num_labels",
    "dtype",
    "peft",
    "attn_implementation",
)


def config_field_names() -> list[str]:
    return [f.name for f in fields(DistillationConfig) if f.init]


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
    value = _numbers(yaml.safe_load(text))
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    return value


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


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    raw: dict = {}
    if path is not None:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"recipe {path} must be a mapping of keys to values, got {type(raw).__name__}")
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
    student = raw.get("student") or {}
    reject_unknown_keys(student, STUDENT_KEYS, where="student")
    dataset = raw.get("dataset") or {}
    reject_unknown_keys(dataset, [f.name for f in fields(DataConfig)], where="dataset")
    stages = raw.get("stages") or []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or "name" not in stage:
            raise ValueError(f"stages[{i}] must be a mapping with a name and the keys it overrides")
        overrides_of_stage = {k: v for k, v in stage.items() if k != "name"}
        reject_unknown_keys(overrides_of_stage, config_field_names() + ["dataset"], where=f"stages[{i}]")
        stage_config = {**config, **{k: v for k, v in overrides_of_stage.items() if k != "dataset"}}
        DistillationConfig(**stage_config)  # every stage must be a valid config on its own, before any training
    return Recipe(
        config=config,
        student=student,
        dataset=dataset,
        cache=raw.get("cache") or {},
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
