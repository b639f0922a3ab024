"""``llm-distill score-data RECIPE``: the sample-level data-selection step alone (see ``select.py``)."""

from __future__ import annotations

import argparse

from ..tasks import load_model
from .preflight import preflight
from .run import initial_student
from .schema import load_recipe
from .select import scores_path, select_samples


def main(argv: list[str]) -> int:
    """``llm-distill score-data RECIPE [--key value ...]``: the sample-level scoring step alone."""
    parser = argparse.ArgumentParser(
        prog="llm-distill score-data",
        description="score the recipe's training rows with its teacher (and, for excess_loss, its initial student) "
        "and write them to data_selection.scores_path, where train and cache-logits reuse them",
        epilog="Overrides as for train: --key value, --data_selection.keep 0.5, --dataset.max_samples 1000.",
    )
    parser.add_argument("recipe", nargs="?", help="YAML recipe with a data_selection block (level: sample)")
    ns, overrides = parser.parse_known_args(argv)
    recipe = load_recipe(ns.recipe, overrides)
    args = recipe.training_args()
    if args.selection is None or args.selection.level != "sample":
        raise ValueError("score-data needs data_selection with level: sample in the recipe (or --data_selection.*)")
    checked = preflight(recipe, "score-data")  # no weight is read until it passes
    args, task, train_ds = checked.args, checked.task, checked.train_dataset
    teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype)
    selected = select_samples(
        args,
        task,
        train_ds,
        checked.tokenizer,
        max_length=checked.data.max_length,
        teacher=teacher,
        reference=lambda: initial_student(recipe, args, task, teacher),
    )
    print(f"{scores_path(args)}: {len(selected)} of {len(train_ds)} training rows kept")
    return 0
