"""llm_distill: knowledge distillation for Hugging Face models.

The parts (see docs/architecture.md): ``losses`` (pure tensor functions), ``teacher`` (where targets come from:
live model, logit store), ``student`` (build a smaller model from the teacher), ``features`` (layer maps and
feature terms), ``vocab`` (how two tokenizers relate), ``data`` (raw data -> counted tokens), ``onpolicy``
(generated completions: on-policy steps, sequence-level KD), ``recipes`` (YAML ->
a run), ``trainer`` + ``config`` (the Trainer and its arguments), ``evaluation``, ``assets`` (teachers from PyPI).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._requirements import check_versions
from ._version import __version__

check_versions()

# The public names are imported on first use (PEP 562): they pull in torch and the transformers Trainer, seconds that
# `llm-distill --help` and the submodules that need neither should not pay.
_PUBLIC = {
    "DistillationConfig": ".config",
    "DistillationTrainer": ".trainer",
    "LiveTeacher": ".teacher",
    "TeacherOutputs": ".teacher",
}

if TYPE_CHECKING:
    from .config import DistillationConfig
    from .teacher import LiveTeacher, TeacherOutputs
    from .trainer import DistillationTrainer


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llm_distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["DistillationConfig", "DistillationTrainer", "LiveTeacher", "TeacherOutputs", "__version__"]
