"""The student as its own teacher: an EMA (or frozen) copy of it, its live weights, or its LoRA base model.

- ``EmaTeacher``: a copy of the student taken when the run starts, updated after every optimizer step as
  ``teacher = decay * teacher + (1 - decay) * student`` (decay 1: the frozen initial copy; 0: the current student).
  Its weights are part of the run's state: written into every checkpoint and restored on resume, never reloaded
  from the student's source on disk. Under DDP every process holds the student's synchronised weights after the
  step, so every process computes the same EMA; under FSDP2 each sharded parameter is gathered for the update.
- ``OwnWeightsTeacher``: the student's current weights without gradient (``live``), or a LoRA student's base
  model with its adapters disabled (``lora_base``, peft's ``disable_adapter()``): no second copy in memory. The
  teacher forward runs in eval mode under ``no_grad``; the student's own forward (adapters on) follows it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import nn

from .base import TeacherOutputs, config_output_width
from .live import LiveTeacher, forward_targets


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value: FSDP2 keeps a shard (a DTensor) on each process."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class EmaTeacher(LiveTeacher):
    """An exponential moving average of the student (``self_teacher: ema``; ``frozen`` is ``decay=1``)."""

    def __init__(self, student: nn.Module, *, decay: float, name: str = "ema"):
        super().__init__(copy.deepcopy(student), name=name)
        self.decay = float(decay)

    def describe(self) -> dict:
        return {"teacher": f"self ({self.name}, decay {self.decay})"}

    def place(self, accelerator, device) -> None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(
                "self_teacher='ema'/'frozen' keeps a full copy of the student, which DeepSpeed partitions; use DDP or "
                "FSDP2 with it"
            )
        self.model.to(device)  # a full replica on every process, like a DDP teacher

    @torch.no_grad()
    def after_optimizer_step(self, student: nn.Module) -> None:
        if self.decay == 1.0:
            return
        current = dict(student.named_parameters())
        for name, param in self.model.named_parameters():
            # lerp(a, b, 1) is exactly b and lerp(a, b, 0) exactly a, so decay 0 / 1 are exact.
            param.lerp_(_full(current[name]).to(param.device, param.dtype), 1.0 - self.decay)
        buffers = dict(student.named_buffers())
        for name, buffer in self.model.named_buffers():
            if name in buffers:
                buffer.copy_(_full(buffers[name]))

    def teacher_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_teacher_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


class OwnWeightsTeacher:
    """The student's own current weights as the teacher (``live``), or its LoRA base (``lora_base``)."""

    def __init__(self, student: nn.Module, *, adapters_disabled: bool):
        if adapters_disabled and not hasattr(student, "disable_adapter"):
            raise ValueError(
                f"self_teacher='lora_base' needs a LoRA (peft) student, got {type(student).__name__}; add "
                "student.peft to the recipe or use self_teacher='frozen'"
            )
        self.model = student
        self.adapters_disabled = adapters_disabled

    @property
    def config(self):
        return self.model.config

    def output_width(self, task: str) -> int | None:
        return config_output_width(self.config, task)

    def place(self, accelerator, device) -> None:
        """Nothing to place: the Trainer places the student."""

    def describe(self) -> dict:
        return {"teacher": "self (LoRA base, adapters disabled)" if self.adapters_disabled else "self (live weights)"}

    def __call__(
        self,
        batch: dict,
        *,
        hidden_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        want_logits: bool = True,
        want_final_hidden: bool = False,
    ) -> TeacherOutputs:
        was_training = self.model.training
        self.model.eval()  # no dropout in the targets; the student's own forward is back in train mode
        adapters = self.model.disable_adapter() if self.adapters_disabled else contextlib.nullcontext()
        try:
            with adapters:
                return forward_targets(
                    self.model,
                    batch,
                    hidden_layers=hidden_layers,
                    attention_layers=attention_layers,
                    want_logits=want_logits,
                    want_final_hidden=want_final_hidden,
                )
        finally:
            self.model.train(was_training)
