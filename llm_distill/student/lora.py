"""LoRA students: wrap a student in peft adapters, and fold them back into a plain model for export."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from ..export import match_umask
from ..tasks import task_of_class_name

# peft's task types for the tasks this package distils (masked LMs have none: peft then wraps the bare model).
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


def apply_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | str | None = None,
    modules_to_save: Sequence[str] | None = None,
    task_type: str | None = None,
):
    """Wrap ``model`` in a peft LoRA adapter and return the ``PeftModel``.

    ``target_modules=None`` lets peft pick its per-architecture default (BERT ``query``/``value``, Llama
    ``q_proj``/``v_proj``). ``task_type`` defaults from the class name (``...ForCausalLM`` -> ``CAUSAL_LM``,
    ``...ForSequenceClassification`` -> ``SEQ_CLS``, which also trains the fresh classifier head).
    Merge before export with ``model.merge_and_unload()``.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA r={r} must be >= 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout={dropout} must be in [0, 1)")
    if task_type is None:
        task_type = PEFT_TASK_TYPES.get(task_of_class_name(type(model).__name__))
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def save_merged(trainer, output_dir: str) -> str:
    """Fold LoRA adapters into the base weights and save a plain model that loads without peft."""
    if not trainer.args.should_save:
        return output_dir
    merged = copy.deepcopy(trainer.student).merge_and_unload()
    merged.save_pretrained(output_dir)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    match_umask(output_dir)  # safetensors writes weights owner-only; give them the folder's usual mode
    return output_dir
