"""Where the distillation targets come from: every source speaks the ``TeacherSource`` protocol (``base.py``).

``live`` (a frozen model run per batch), ``cached`` (sparse targets from a logit store), ``store/`` (writing and
reading such stores), ``sharding`` (where a live teacher sits under each distributed strategy), ``sources`` (which
source a run uses).
"""

from .base import TeacherOutputs, TeacherSource, model_inputs, no_logits
from .cached import CachedTeacher
from .live import LiveTeacher
from .sources import build_teacher_source

__all__ = [
    "CachedTeacher",
    "LiveTeacher",
    "TeacherOutputs",
    "TeacherSource",
    "build_teacher_source",
    "model_inputs",
    "no_logits",
]
