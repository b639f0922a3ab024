"""Bytes per device of the student's training state and of the frozen teacher, for each distributed strategy.

Student state (P parameters, P_t trainable, N devices, w bytes per weight), following the ZeRO paper's accounting
(Rajbhandari et al. 2020, sec. 3: 2 + 2 + 12 bytes per parameter for mixed-precision Adam) and PyTorch's DDP/FSDP2:

- ``single`` / ``ddp``: weights P w, gradients P_t w, Adam moments 2 P_t w (torch keeps them in the parameter's
  dtype); DDP with N > 1 adds its gradient buckets (P_t w: gradients are copied into flat buffers for all-reduce).
- ``zero2``: DeepSpeed keeps 16-bit weights (P x 2) on every device; fp32 master weights, moments and gradients are
  partitioned: (4 + 8 + 2) P_t / N. Without mixed precision: weights P x 4, (8 + 4) P_t / N.
- ``zero3``: everything partitioned ((2 + 2 + 12) P / N), plus the parameters gathered for the running block.
- ``fsdp2``: fp32 weights, gradients and moments sharded ((4 + 4 + 8) P / N), plus one block gathered in the
  compute dtype for forward/backward and its unsharded gradients.

Teacher (frozen: no gradients, no optimizer), as ``distributed.prepare_teacher`` places it: a full replica under
``single``, ``ddp`` and ``zero2``; sharded over N under ``fsdp2`` (plus one gathered block) and ``zero3`` (plus the
prefetch bucket that ``distributed._zero3_inference_config`` sizes to 0.9 H^2 parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("single", "ddp", "fsdp2", "zero2", "zero3")
ADAM_STATES = 2  # exp_avg and exp_avg_sq
EIGHT_BIT_MARKERS = ("8bit", "int8")


@dataclass
class StudentState:
    weights: int
    adapters: int
    gathered: int  # parameters gathered for the running block (FSDP2 / ZeRO-3); transient, present in fwd/bwd
    gradients: int
    gathered_gradients: int  # unsharded gradients of the block being reduced (FSDP2)
    optimizer: int
    master: int  # fp32 master weights held apart from the model's weights (DeepSpeed mixed precision)
    buckets: int  # DDP gradient buckets
    notes: list[str]


def optimizer_bytes_per_param(optim: str, dtype: torch.dtype) -> tuple[float, str]:
    """Bytes of optimizer state per trainable parameter, and what that assumes."""
    name = str(optim).lower()
    if any(m in name for m in EIGHT_BIT_MARKERS):
        return 2.0, f"{optim}: two 8-bit moments"
    if "adafactor" in name:
        return 0.0, f"{optim}: factored second moment (rows + columns), counted as 0"
    if "sgd" in name:
        return float(dtype.itemsize), f"{optim}: one momentum buffer"
    if not name.startswith("adam") and "lion" not in name:
        return float(ADAM_STATES * dtype.itemsize), f"{optim}: not known here, counted as Adam"
    states = 1 if "lion" in name else ADAM_STATES
    return float(states * dtype.itemsize), f"{optim}: {states} moment(s) in {str(dtype).replace('torch.', '')}"


def student_state(
    params: int, trainable: int, adapters: int, block: int, dtype: torch.dtype, *, mixed: bool, optim: str,
    strategy: str, devices: int,
) -> StudentState:  # fmt: skip
    """The student's persistent training state per device (see the module docstring)."""
    n = max(devices, 1)
    w = dtype.itemsize
    per_param, optim_note = optimizer_bytes_per_param(optim, dtype)
    base = params - adapters
    notes = [optim_note]
    if strategy in ("single", "ddp"):
        buckets = trainable * w if (strategy == "ddp" and n > 1) else 0
        return StudentState(base * w, adapters * w, 0, trainable * w, 0, int(trainable * per_param), 0, buckets, notes)
    if strategy == "zero2":
        wb = 2 if mixed else w
        master = trainable * 4 // n if mixed else 0
        grads = trainable * (2 if mixed else w) // n
        opt = int(trainable * ADAM_STATES * 4 / n)
        notes.append("DeepSpeed: fp32 master weights and moments partitioned over the devices")
        return StudentState(base * wb, adapters * wb, 0, grads, 0, opt, master, 0, notes)
    if strategy == "zero3":
        wb = 2 if mixed else w
        master = trainable * 4 // n if mixed else 0
        return StudentState(
            base * wb // n, adapters * wb // n, block * wb, trainable * wb // n, 0,
            int(trainable * ADAM_STATES * 4 / n), master, 0, notes + ["DeepSpeed ZeRO-3: all states partitioned"],
        )  # fmt: skip
    if strategy == "fsdp2":
        compute = 2 if mixed else w
        return StudentState(
            base * w // n, adapters * w // n, 2 * block * compute, trainable * w // n, block * 4,
            int(trainable * per_param / n), 0, 0, notes + ["FSDP2: the running block and the next one gathered"],
        )  # fmt: skip
    raise ValueError(f"strategy={strategy!r} is not known; expected one of {', '.join(STRATEGIES)}")


def teacher_bytes(params: int, block: int, hidden: int, dtype: torch.dtype, strategy: str, devices: int) -> tuple:
    """(resident bytes, gathered bytes while it runs, how) of a frozen teacher on one device."""
    n = max(devices, 1)
    b = dtype.itemsize
    if strategy in ("single", "ddp", "zero2") or n == 1:
        return params * b, 0, "full replica"
    if strategy == "fsdp2":
        return params * b // n, block * b, f"sharded over {n}, one block gathered"
    if strategy == "zero3":
        return params * b // n, int(0.9 * hidden * hidden) * b, f"partitioned over {n}, prefetch bucket 0.9 H^2"
    raise ValueError(f"strategy={strategy!r} is not known; expected one of {', '.join(STRATEGIES)}")
