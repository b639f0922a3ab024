"""``llm-distill generate RECIPE``: the recipe's teacher writes its completions of the recipe's training prompts.

The result is sequence-level KD data (Kim & Rush, 2016): a folder whose ``completions.jsonl`` a later recipe trains
on with ``dataset: {path: OUTPUT_DIR/completions.jsonl, task: prompt_completion}`` — with CE alone (sequence-level KD)
or with a live teacher's token-level KD on top. Sampling follows the recipe's ``max_new_tokens``,
``generation_temperature``, ``top_p``, ``top_k`` and ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checks import reject_unknown_keys
from ..onpolicy.completions import generate_completions
from ..onpolicy.generation import SamplingSettings
from ..tasks import load_model
from .preflight import preflight
from .schema import Recipe

GENERATE_KEYS = ("output_dir", "batch_size", "shard_size")


def generate(recipe: Recipe) -> Path:
    """Write the teacher's completions of the recipe's training prompts; returns the folder."""
    args = recipe.training_args()
    reject_unknown_keys(recipe.generate, GENERATE_KEYS, where="generate")
    settings = dict(recipe.generate)
    output_dir = settings.pop("output_dir", None)
    if not output_dir:
        raise ValueError("set generate.output_dir to say where the completions go")
    if not args.teacher_model_name_or_path:
        raise ValueError("generate runs the live teacher: set teacher_model_name_or_path")
    if recipe.dataset.get("task") not in ("prompt_completion", "instruction"):
        raise ValueError(
            f"dataset.task={recipe.dataset.get('task')!r} has no prompts to complete; use prompt_completion (or "
            "instruction)"
        )
    checked = preflight(recipe, "generate")  # tokenizers (the teacher reads these ids), data: before the weights
    if checked.task != "causal_lm":
        raise ValueError(f"generate needs a causal LM teacher and prompt data; this recipe distils {checked.task}")
    args, tokenizer, train_ds = checked.args, checked.tokenizer, checked.train_dataset
    teacher = load_model(args.teacher_model_name_or_path, "causal_lm", dtype=args.teacher_dtype).to(args.device)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=args.use_cpu)
    sampling = SamplingSettings(args.max_new_tokens, args.generation_temperature, args.top_p, args.top_k)
    return generate_completions(
        teacher,
        train_ds,
        tokenizer,
        output_dir=output_dir,
        settings=sampling,
        teacher_id=args.teacher_model_name_or_path,
        seed=args.seed,
        accelerator=accelerator,
        **settings,
    )
