"""llm_distill: knowledge distillation for Hugging Face models."""

__version__ = "0.1.0"

from .config import DistillationConfig  # noqa: E402
from .teacher import LiveTeacher, TeacherOutputs  # noqa: E402
from .trainer import DistillationTrainer  # noqa: E402

__all__ = ["DistillationConfig", "DistillationTrainer", "LiveTeacher", "TeacherOutputs", "__version__"]
