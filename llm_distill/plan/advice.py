"""What to change when a run does not fit, each change planned again so that its saving is a number, not a hint."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..losses.fused import auto_chunk_size
from .devices import Device
from .fit import peak_at
from .memory import Footprints
from .spec import RunSpec, StoreSpec

SHARDED = ("fsdp2", "zero2", "zero3")
SUGGESTED_K = 64
DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)


@dataclass
class Situation:
    """The planned run: where it runs, its peak and the largest batch that fits."""

    spec: RunSpec
    device: Device
    strategy: str
    devices: int
    capacity: int
    peak: int
    largest_batch: int

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity


@dataclass
class Suggestion:
    change: str
    peak: int
    saves: int
    fits: bool


def problems(spec: RunSpec, strategy: str) -> list[str]:
    """What ``llm-distill train`` would refuse or what the plan cannot stand behind."""
    out = []
    if spec.fused and strategy in SHARDED:
        out.append(
            f"loss_chunk_size={spec.chunk} is refused under {strategy} (the fused loss applies the lm_head weight "
            "outside the model's forward, which FSDP/DeepSpeed shard): use DDP or loss_chunk_size=0"
        )
    return out


def _changes(plan: Situation) -> list[tuple[str, RunSpec, str, int, bool]]:
    """(description, spec, strategy, devices, student side unchanged) for each single change worth planning."""
    spec, strategy, n = plan.spec, plan.strategy, plan.devices
    out = []
    if spec.task == "causal_lm" and not spec.fused and strategy not in SHARDED:
        chunk = auto_chunk_size(min(v for v in [spec.student.vocab] + [t.shape.vocab for t in spec.teachers] if v))
        out.append((f"fused chunked loss (loss_chunk_size: {chunk})", replace(spec, chunk=chunk), strategy, n, True))
    if spec.live_teacher and not (spec.hidden_pairs or spec.attention_pairs):
        cached = replace(spec, live_teacher=False, teachers=[], store=StoreSpec("topk", SUGGESTED_K, "suggested"))
        out.append((f"cached teacher (llm-distill cache-logits, cache.k: {SUGGESTED_K})", cached, strategy, n, True))
    if not spec.gradient_checkpointing:
        out.append(("activation_checkpointing: true", replace(spec, gradient_checkpointing=True), strategy, n, True))
    if n > 1:
        for other in ("fsdp2", "zero3"):
            if other != strategy and not spec.fused:
                out.append((f"--strategy {other} over {n} devices", spec, other, n, True))
    return out


def suggestions(plan: Situation, footprints: Footprints) -> list[Suggestion]:
    """Each change alone (with the memory it saves), a smaller batch keeping the global batch, more devices with
    a sharded strategy, and all memory changes together when no single one fits."""
    spec, device, base = plan.spec, plan.device, plan.peak
    out: list[Suggestion] = []
    combined, combined_fp = spec, footprints
    for text, changed, strategy, n, same_student in _changes(plan):
        fp = Footprints(changed, reuse=footprints if same_student else None)
        peak = peak_at(changed, fp, changed.batch, strategy, n, device)
        out.append(Suggestion(text, peak, base - peak, peak <= plan.capacity))
        if strategy == plan.strategy and peak < base:
            combined = replace(
                combined, chunk=changed.chunk, live_teacher=changed.live_teacher, teachers=changed.teachers,
                store=changed.store, gradient_checkpointing=changed.gradient_checkpointing,
            )  # fmt: skip
    if combined is not spec:
        combined_fp = Footprints(combined, reuse=footprints)
        if not any(s.fits for s in out):
            peak = peak_at(combined, combined_fp, combined.batch, plan.strategy, plan.devices, device)
            out.append(Suggestion("all of the above together", peak, base - peak, peak <= plan.capacity))
    if not plan.fits:
        out += _smaller_batch(plan, footprints)
        if plan.devices == 1 and not combined.fused:
            out += _more_devices(plan, combined, combined_fp)
    return out


def _smaller_batch(plan: Situation, footprints: Footprints) -> list[Suggestion]:
    spec = plan.spec
    b = plan.largest_batch
    if b < 1 or b >= spec.batch:
        return []
    accum = math.ceil(spec.batch * spec.grad_accum / b)
    smaller = replace(spec, batch=b, grad_accum=accum)
    peak = peak_at(smaller, footprints, b, plan.strategy, plan.devices, plan.device)
    text = f"per_device_train_batch_size: {b}, gradient_accumulation_steps: {accum} (same global batch)"
    return [Suggestion(text, peak, plan.peak - peak, peak <= plan.capacity)]


def _more_devices(plan: Situation, spec: RunSpec, footprints: Footprints) -> list[Suggestion]:
    """The fewest devices over which FSDP2 makes the run fit (with the memory changes above)."""
    for n in DEVICE_COUNTS:
        peak = peak_at(spec, footprints, spec.batch, "fsdp2", n, plan.device)
        if peak <= plan.capacity:
            text = f"--devices {n} --strategy fsdp2" + (" (with the changes above)" if spec is not plan.spec else "")
            return [Suggestion(text, peak, plan.peak - peak, True)]
    return []
