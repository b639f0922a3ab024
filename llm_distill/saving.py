"""What a distillation run writes beside the student, and how a checkpoint restores it.

The exported folder is a plain ``save_pretrained`` student (no teacher weights, no projections) with
``distillation.json`` and a model card; checkpoints also hold the feature projections and a teacher that changes
during the run (an EMA of the student), so that a resume is exact.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from .export import METADATA_NAME, PROJECTIONS_NAME, TEACHER_STATE_NAME, match_umask
from .features import StudentWithFeatures
from .model_card import write_model_card
from .teacher import TrainedTeacherSource


class StudentSaving:
    """Mixed into ``DistillationTrainer`` before ``transformers.Trainer`` (uses its ``teacher``, ``student`` and
    ``distillation_metadata``)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # The student only: the teacher is not an attribute Trainer saves, so no teacher weights land here.
        output_dir = output_dir or self.args.output_dir
        if not isinstance(self.accelerator.unwrap_model(self.model), StudentWithFeatures):
            super()._save(output_dir, state_dict)
        else:
            self._save_student_and_projections(output_dir, state_dict)
        if self.args.should_save and isinstance(self.teacher, TrainedTeacherSource) and is_checkpoint(output_dir):
            # The teacher changes during the run (an EMA of the student): its weights are part of the run's state.
            os.makedirs(output_dir, exist_ok=True)
            torch.save(self.teacher.teacher_state(), os.path.join(output_dir, TEACHER_STATE_NAME))
        if self.args.should_save:
            match_umask(output_dir)  # safetensors writes weights owner-only (0600); give them config.json's mode
            meta = self.distillation_metadata()
            with open(os.path.join(output_dir, METADATA_NAME), "w") as fh:
                json.dump(meta, fh, indent=2)
            write_model_card(output_dir, meta, self.state.log_history)

    def _save_student_and_projections(self, output_dir: str, state_dict: dict | None) -> None:
        """Student weights as a plain ``save_pretrained`` folder; projections beside them in checkpoints only."""
        state_dict = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
        student_state = {k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")}
        projections = {k[len("features.") :]: v for k, v in state_dict.items() if k.startswith("features.")}
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.student.save_pretrained(output_dir, state_dict=student_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if is_checkpoint(output_dir) and projections:
            save_file({k: v.contiguous() for k, v in projections.items()}, os.path.join(output_dir, PROJECTIONS_NAME))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and isinstance(self.teacher, TrainedTeacherSource):
            # Every strategy (DeepSpeed too, which skips _load_from_checkpoint) passes here before the first step.
            path = os.path.join(resume_from_checkpoint, TEACHER_STATE_NAME)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{resume_from_checkpoint} has no {TEACHER_STATE_NAME}: the run's teacher changes during training "
                    "(self_teacher=ema/frozen) and cannot be restored from a checkpoint written without it"
                )
            self.teacher.load_teacher_state(torch.load(path, map_location="cpu", weights_only=True))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(self.model)
        if model is not None or not isinstance(wrapper, StudentWithFeatures):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.student)
        path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if len(wrapper.features.state_dict()) == 0:
            return
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{resume_from_checkpoint} has no {PROJECTIONS_NAME}: it was not written by a feature-distillation "
                "run, so the hidden-state projections cannot be restored"
            )
        wrapper.features.load_state_dict(load_file(path))


def is_checkpoint(output_dir: str) -> bool:
    return os.path.basename(os.path.normpath(output_dir)).startswith("checkpoint-")
