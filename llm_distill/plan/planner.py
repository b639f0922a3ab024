"""A plan: memory per device with a verdict, the largest batch that fits, what to change, and the time it takes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .advice import SHARDED, Situation, Suggestion, problems, suggestions
from .devices import Device
from .fit import largest_batch
from .flops import StepFlops, step_flops
from .memory import Footprints, MemoryPlan, memory_plan
from .spec import RunSpec


@dataclass
class Plan:
    spec: RunSpec
    device: Device
    devices: int
    strategy: str
    capacity: int
    memory: MemoryPlan
    largest_batch: int  # per device; 0 when not even one row fits
    flops: StepFlops
    step_seconds: float | None
    total_steps: int | None
    suggestions: list[Suggestion] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.peak <= self.capacity

    @property
    def total_seconds(self) -> float | None:
        if self.step_seconds is None or self.total_steps is None:
            return None
        return self.step_seconds * self.total_steps


def total_steps(spec: RunSpec, devices: int) -> int | None:
    args = spec.args
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    if spec.lengths.rows is None:
        return None
    per_step = spec.batch * spec.grad_accum * max(devices, 1)
    return math.ceil(args.num_train_epochs * spec.lengths.rows / per_step)


def step_seconds(flops: StepFlops, spec: RunSpec, device: Device) -> float | None:
    """Seconds per optimizer step: flops over the device's throughput; on the CPU, over the rates measured for each
    part (plus the measured per-micro-batch rest of each model's body, scaled with its tokens, and the optimizer)."""
    if device.rates:
        r = device.rates
        student = r["student"]
        seconds = (flops.student_blocks + flops.recompute + flops.generation) / student
        seconds += flops.teacher / r.get("teacher", student) + flops.student_head / r.get("head", student)
        share = flops.tokens / (r["tokens"] * spec.grad_accum)  # micro-batch tokens relative to the calibration's
        rest = r.get("student_rest", 0.0) + (r.get("teacher_rest", 0.0) if spec.teachers else 0.0)
        seconds += spec.grad_accum * share * rest
        return seconds + (spec.student.trainable + spec.projection_params) / r["optimizer"]
    peak = device.peak.get(spec.precision)
    if not peak:
        return None
    return flops.total / (peak * device.utilisation)


def make_plan(
    spec: RunSpec, device: Device, *, devices: int = 1, strategy: str | None = None, capacity: int | None = None,
    advise: bool = True,
) -> Plan:  # fmt: skip
    strategy = strategy or ("ddp" if devices > 1 else "single")
    if spec.chunk_auto and spec.fused and strategy in SHARDED:
        spec = replace(spec, chunk=0)  # the trainer's 'auto' falls back to full logits under FSDP / ZeRO-3
    capacity = capacity or device.memory
    footprints = Footprints(spec)
    memory = memory_plan(
        spec, spec.batch, footprints.at(spec.batch), strategy=strategy, devices=devices,
        runtime=(device.runtime, device.runtime_note),
    )  # fmt: skip
    flops = step_flops(spec, spec.batch)
    plan = Plan(
        spec=spec,
        device=device,
        devices=devices,
        strategy=strategy,
        capacity=capacity,
        memory=memory,
        largest_batch=largest_batch(spec, footprints, capacity, strategy, devices, device),
        flops=flops,
        step_seconds=step_seconds(flops, spec, device),
        total_steps=total_steps(spec, devices),
        problems=problems(spec, strategy),
    )
    if advise:
        situation = Situation(spec, device, strategy, devices, capacity, memory.peak, plan.largest_batch)
        plan.suggestions = suggestions(situation, footprints)
    return plan
