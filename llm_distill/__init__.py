"""llm_distill: knowledge distillation for Hugging Face models.

The parts (see docs/architecture.md): ``losses`` (pure tensor functions), ``teacher`` (where targets come from:
live model, logit store), ``student`` (build a smaller model from the teacher), ``features`` (layer maps and
feature terms), ``vocab`` (how two tokenizers relate), ``data`` (raw data -> counted tokens), ``onpolicy``
(generated completions: on-policy steps, sequence-level KD), ``recipes`` (YAML ->
a run), ``trainer`` + ``config`` (the Trainer and its arguments), ``evaluation``, ``assets`` (teachers from PyPI).
"""

from ._requirements import check_versions
from ._version import __version__

check_versions()

from .config import DistillationConfig  # noqa: E402
from .teacher import LiveTeacher, TeacherOutputs  # noqa: E402
from .trainer import DistillationTrainer  # noqa: E402

__all__ = ["DistillationConfig", "DistillationTrainer", "LiveTeacher", "TeacherOutputs", "__version__"]
