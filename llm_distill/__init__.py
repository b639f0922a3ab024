"""llm_distill: knowledge distillation for Hugging Face models.

The parts (see docs/architecture.md): ``losses`` (pure tensor functions), ``teacher`` (where targets come from:
live model, logit store), ``student`` (build a smaller model from the teacher), ``features`` (layer maps and
feature terms), ``vocab`` (how two tokenizers relate), ``data`` (raw data -> counted tokens), ``onpolicy``
(generated completions: on-policy steps, sequence-level KD), ``recipes`` (YAML ->
a run), ``trainer`` + ``config`` (the Trainer and its arguments), ``evaluation``, ``assets`` (teachers from PyPI).
"""

from ._version import __version__
from .config import DistillationConfig
from .teacher import LiveTeacher, TeacherOutputs
from .trainer import DistillationTrainer

__all__ = ["DistillationConfig", "DistillationTrainer", "LiveTeacher", "TeacherOutputs", "__version__"]
