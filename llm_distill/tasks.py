"""The kinds of model the package distils, how each is recognised and loaded, and what counts as its target.

One definition each, used everywhere: the task names (``TASKS``), the task of a model class or of a dataset kind,
the dtype names, and the counted-token mask (``targets``) that the trainer, the gradient-accumulation token counts
and the logit store all use, so they cannot drift apart.
"""

from __future__ import annotations

import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "sequence_classification": AutoModelForSequenceClassification,
}
TASKS = tuple(AUTO_CLASSES)
# Class-name suffixes of transformers' model heads, and the task each one is distilled as.
CLASS_SUFFIXES = (
    ("ForCausalLM", "causal_lm"),
    ("LMHeadModel", "causal_lm"),
    ("ForMaskedLM", "masked_lm"),
    ("ForSequenceClassification", "sequence_classification"),
)
# The dataset kinds of ``DataConfig.task`` and the model task each one trains by default.
DATA_TASKS = {
    "text": "causal_lm",
    "instruction": "causal_lm",
    "classification": "sequence_classification",
    "prompt_completion": "causal_lm",
}
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def task_of_class_name(name: str) -> str | None:
    """The task of a transformers model class name (``LlamaForCausalLM`` -> ``causal_lm``), or None."""
    for suffix, task in CLASS_SUFFIXES:
        if name.endswith(suffix):
            return task
    return None


def infer_task(model) -> str:
    """Task of a (possibly peft-wrapped) model, from its class name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    task = task_of_class_name(type(base).__name__)
    if task is None:
        raise ValueError(
            f"cannot infer the distillation task from the student class {type(base).__name__}; set task to one of "
            f"{', '.join(TASKS)}"
        )
    return task


def task_for_data(data_task: str) -> str:
    """The model task a dataset kind trains when the recipe leaves ``task: auto``."""
    if data_task not in DATA_TASKS:
        raise ValueError(f"dataset.task={data_task!r} is not accepted; expected one of {', '.join(DATA_TASKS)}")
    return DATA_TASKS[data_task]


def torch_dtype(name: str, *, field: str = "dtype"):
    """``"bfloat16"`` -> ``torch.bfloat16`` (``"auto"`` passes through); ``field`` names the setting in errors."""
    if name not in DTYPES:
        raise ValueError(f"{field}={name!r} is not accepted; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_config(name: str, field: str):
    """A model's config from a folder or a hub id, without its weights; errors name ``field``."""
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"{field}={name!r} is a folder without config.json: not a saved model")
    if not os.path.exists(name) and (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1):
        # Not a hub id ('org/name'): a local path that is not there.
        raise ValueError(f"{field}={name!r} does not exist (relative paths are from {os.getcwd()})")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "is not a folder here" if not os.path.exists(name) else "cannot be read"
        raise ValueError(
            f"{field}={name!r} {where} (relative paths are from {os.getcwd()}) and could not be loaded as a Hugging "
            f"Face hub id ({' '.join(str(err).split())[:200]})"
        ) from err


# Files that hold a tokenizer's vocabulary; a folder with none of them has no tokenizer, whatever a loader builds.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)


def _bare_byte_level_bpe(folder: str):
    """A folder holding only GPT-2's two files (``vocab.json`` + ``merges.txt``, no ``tokenizer.json`` or
    ``tokenizer_config.json``) read as the byte-level BPE they define, ending texts with ``<|endoftext|>`` when the
    vocabulary has it; None for any other folder or name. transformers cannot build a tokenizer from these two files
    alone without knowing its class."""
    files = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    if not {"vocab.json", "merges.txt"} <= files or files & {"tokenizer.json", "tokenizer_config.json"}:
        return None
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    eos = "<|endoftext|>" if bpe.token_to_id("<|endoftext|>") is not None else None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos)
    tokenizer.name_or_path = folder
    return tokenizer


def load_tokenizer_of(name: str, field: str):
    """A model's tokenizer (no weights); a folder without vocabulary files is refused, naming ``field``: transformers
    would otherwise build a tokenizer that knows only the special tokens, and every text would read as [UNK]."""
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        raise ValueError(
            f"{field}={name!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); save the tokenizer "
            "beside the model (tokenizer.save_pretrained(folder))"
        )
    try:
        tokenizer = _bare_byte_level_bpe(name) or AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"{field}={name!r} has no tokenizer that can be loaded ({' '.join(str(err).split())[:200]}); the "
            "tokenizer files (tokenizer.json or vocab files) must sit beside the model"
        ) from err
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ValueError(f"{field}={name!r} has a tokenizer with no vocabulary beyond its special tokens")
    return tokenizer


def load_model(name_or_path: str, task: str, *, dtype: str = "auto", **kwargs):
    """Load a model of the task's Auto class from a hub id or a folder."""
    if task not in AUTO_CLASSES:
        raise ValueError(f"task={task!r} is not accepted; expected one of {', '.join(TASKS)}")
    return AUTO_CLASSES[task].from_pretrained(name_or_path, dtype=torch_dtype(dtype), **kwargs)


def targets(batch: dict, task: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Counted-position mask and labels, both aligned with the student's logits.

    Returns ``(mask, labels)``: for token tasks ``(B, S)`` each (causal LMs: position t is counted when token t+1
    is a real, labelled token, and ``labels[:, t]`` holds token t+1 — the shift of the CE loss); for sequence
    classification ``(B,)``. ``labels`` is None when the batch has none (pure distillation).
    """
    labels = batch.get("labels")
    attention = batch.get("attention_mask")
    if task == "sequence_classification":
        n = batch["input_ids"].shape[0]
        if labels is None:
            return torch.ones(n, dtype=torch.bool, device=batch["input_ids"].device), None
        return labels != -100, labels
    if labels is None:
        labels = batch["input_ids"] if attention is None else batch["input_ids"].masked_fill(attention == 0, -100)
    if task == "causal_lm":
        pad = torch.full_like(labels[:, :1], -100)
        labels = torch.cat([labels[:, 1:], pad], dim=1)
        if attention is not None:
            attention = torch.cat([attention[:, 1:], torch.zeros_like(attention[:, :1])], dim=1)
    if attention is not None:
        labels = labels.masked_fill(attention == 0, -100)
    return labels != -100, labels


def real_token_mask(batch: dict) -> torch.Tensor:
    """``(B, S)`` True at non-padding positions (what hidden-state and attention losses count)."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].bool()
    return torch.ones_like(batch["input_ids"], dtype=torch.bool)
