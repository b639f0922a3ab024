"""The trainer's stops on non-finite values: teacher targets, the loss and the gradient norm.

A NaN or inf anywhere in a step would otherwise train the student on garbage, log a loss of 0 or save an all-NaN
model with exit 0; each check stops the run before the optimizer step, any checkpoint or export, naming the step,
the source and the tensor.
"""

from __future__ import annotations

import math

import torch

from .checks import NonFiniteError
from .teacher import TeacherOutputs, TeacherPart


class NonFiniteGuards:
    """Mixed into ``DistillationTrainer`` (uses its ``state``, ``model`` and ``teacher``)."""

    def _where(self) -> str:
        return f"step {self.state.global_step + 1}" if self.model.training else "evaluation"

    def _check_teacher_finite(self, out: TeacherOutputs, mask: torch.Tensor) -> None:
        """A NaN/inf in the targets would train the student on garbage (or log kd_loss 0): stop, naming the source."""
        for part in out.parts or [TeacherPart("", out)]:
            rows = mask if part.rows is None else mask & part.rows.reshape(-1, *([1] * (mask.dim() - 1)))
            checks = {
                "logits": part.outputs.logits,
                "final hidden states": part.outputs.final_hidden,
                "cached log-probabilities": None if part.outputs.sparse is None else part.outputs.sparse.logprobs,
            }
            for name, tensor in checks.items():
                if tensor is None:
                    continue
                finite = torch.isfinite(tensor)
                while finite.dim() > rows.dim():
                    finite = finite.all(-1)
                bad = int((~finite & rows).sum())
                if bad:
                    who = (
                        f"teacher {part.name!r} of {self.teacher.describe()}" if part.name else self.teacher.describe()
                    )
                    raise NonFiniteError(
                        f"{self._where()}: the teacher's {name} hold NaN or inf at {bad} of {int(rows.sum())} counted "
                        f"positions (teacher: {who}); training stopped before any checkpoint or export was written. "
                        "Check the teacher's weights (a NaN in a weight file) and its dtype (fp16 overflow)"
                    )

    def _check_loss_finite(self, loss: torch.Tensor, terms: dict) -> None:
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
            raise NonFiniteError(
                f"{self._where()}: the loss is {float(loss)} (term sums: {values}); training stopped before any "
                "checkpoint or export was written. Lower the learning rate, or check the student's weights and dtype"
            )

    def _get_grad_norm(self, model, grad_norm=None):
        """Transformers computes the global gradient norm before every optimizer step; a non-finite one stops the run
        there, before the step, the checkpoint or the export, naming the first parameter whose gradient is bad."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            bad = next(
                (n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
                "(on another process)",
            )
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: the gradient norm is {float(grad_norm)} (first non-finite "
                f"gradient: {bad}); training stopped before the optimizer step, any checkpoint or export. Lower the "
                "learning rate, or use bf16 instead of fp16"
            )
        return grad_norm
