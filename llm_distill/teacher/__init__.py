"""Where the distillation targets come from: every source speaks the ``TeacherSource`` protocol (``base.py``).

``live`` (a frozen model run per batch), ``cached`` (sparse targets from a logit store), ``store/`` (writing and
reading such stores), ``sharding`` (where a live teacher sits under each distributed strategy), ``multi`` (several
teachers: mixture, sum, routed rows), ``own`` (the student as its own teacher: an EMA / frozen copy, its live
weights, its LoRA base), ``context`` (the teacher reads another prompt before the same completion), ``aligned`` (a
teacher with another tokenizer reads its own ids and answers at aligned positions), ``sources`` (which source a run
uses).
"""

from .aligned import AlignedTeacher
from .base import (
    TEACHER_BATCH_KEYS,
    TeacherOutputs,
    TeacherPart,
    TeacherSource,
    TrainedTeacherSource,
    model_inputs,
    no_logits,
)
from .cached import CachedTeacher
from .context import ContextTeacher
from .live import LiveTeacher
from .multi import MultiTeacher
from .own import EmaTeacher, OwnWeightsTeacher
from .sources import build_teacher_source

__all__ = [
    "TEACHER_BATCH_KEYS",
    "AlignedTeacher",
    "CachedTeacher",
    "ContextTeacher",
    "EmaTeacher",
    "LiveTeacher",
    "MultiTeacher",
    "OwnWeightsTeacher",
    "TeacherOutputs",
    "TeacherPart",
    "TeacherSource",
    "TrainedTeacherSource",
    "build_teacher_source",
    "model_inputs",
    "no_logits",
]
