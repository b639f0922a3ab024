"""The student: built from the teacher (``build``: shrink its config, copy chosen layers), optionally with LoRA
adapters (``lora``)."""

from .build import apply_config_overrides, select_teacher_layers, shrink_config, student_config, student_from_teacher
from .lora import apply_lora, save_merged

__all__ = [
    "apply_config_overrides",
    "apply_lora",
    "save_merged",
    "select_teacher_layers",
    "shrink_config",
    "student_config",
    "student_from_teacher",
]
