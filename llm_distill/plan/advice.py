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


def _changes(plan: Situation) -> list[tuple[str, dict, str]]:
    """(description, the RunSpec fields it changes, strategy) for each single change worth planning. None of
    them touches the student's side (model, precision, lengths), so the student's traces are reused."""
    spec, strategy = plan.spec, plan.strategy
    out: list[tuple[str, dict, str]] = []
    if spec.task == "causal_lm" and not spec.fused and strategy not in SHARDED:
        chunk = auto_chunk_size(min(v for v in [spec.student.vocab] + [t.shape.vocab for t in spec.teachers] if v))
        out.append((f"fused chunked loss (loss_chunk_size: {chunk})", {"chunk": chunk}, strategy))
    if spec.live_teacher and not (spec.hidden_pairs or spec.attention_pairs):
        store = StoreSpec("topk", SUGGESTED_K, "suggested")
        cached = {"live_teacher": False, "teachers": [], "store": store}
        out.append((f"cached teacher (llm-distill cache-logits, cache.k: {SUGGESTED_K})", cached, strategy))
    if not spec.gradient_checkpointing:
        out.append(("activation_checkpointing: true", {"gradient_checkpointing": True}, strategy))
    if plan.devices > 1 and not spec.fused:
        for other in ("fsdp2", "zero3"):
            if other != strategy:
                out.append((f"--strategy {other} over {plan.devices} devices", {}, other))
    return out


def suggestions(plan: Situation, footprints: Footprints) -> list[Suggestion]:
    """Each change alone (with the memory it saves), all memory changes together when no single one fits, then
    when the run does not fit: a smaller batch with the same global batch, and the fewest devices under FSDP2."""
    spec, device, base = plan.spec, plan.device, plan.peak
    out: list[Suggestion] = []
    together: dict = {}
    for text, fields, strategy in _changes(plan):
        changed = replace(spec, **fields)
        peak = peak_at(changed, Footprints(changed, reuse=footprints), changed.batch, strategy, plan.devices, device)
        out.append(Suggestion(text, peak, base - peak, peak <= plan.capacity))
        if strategy == plan.strategy and peak < base:
            together.update(fields)
    if len(together) > 1 and not any(s.fits for s in out):
        combined = replace(spec, **together)
        peak = peak_at(combined, Footprints(combined, reuse=footprints), combined.batch, plan.strategy, plan.devices,
                       device)  # fmt: skip
        out.append(Suggestion("all of the above together", peak, base - peak, peak <= plan.capacity))
    if not plan.fits:
        out += _smaller_batch(plan, footprints)
        if plan.devices == 1:
            # FSDP2 refuses the fused loss: shard the run with every other change that helped.
            sharded = {k: v for k, v in together.items() if k != "chunk"}
            spec_n = replace(spec, **sharded) if sharded else spec
            fp_n = Footprints(spec_n, reuse=footprints) if sharded else footprints
            out += _more_devices(plan, spec_n, fp_n, bool(sharded))
    return out


def _smaller_batch(plan: Situation, footprints: Footprints) -> list[Suggestion]:
    spec = plan.spec
    b = plan.largest_batch
    if b < 1 or b >= spec.batch:
        return []
    accum = math.ceil(spec.batch * spec.grad_accum / b)
    smaller = replace(spec, batch=b, grad_accum=accum)
    peak = peak_at(smaller, footprints, b, plan.strategy, plan.devices, plan.device)
    text = (
        f"per_device_train_batch_size: {b}, gradient_accumulation_steps: {accum} "
        f"(global batch {b * accum} for {spec.batch * spec.grad_accum})"
    )
    return [Suggestion(text, peak, plan.peak - peak, peak <= plan.capacity)]


def _more_devices(plan: Situation, spec: RunSpec, footprints: Footprints, changed: bool) -> list[Suggestion]:
    """The fewest devices over which FSDP2 makes the run fit (with the other memory changes, when ``changed``)."""
    if spec.fused:
        spec = replace(spec, chunk=0)
        footprints = Footprints(spec, reuse=footprints)
        changed = True
    for n in DEVICE_COUNTS:
        peak = peak_at(spec, footprints, spec.batch, "fsdp2", n, plan.device)
        if peak <= plan.capacity:
            text = f"--devices {n} --strategy fsdp2" + (
                " (with the changes above but the fused loss)" if changed else ""
            )
            return [Suggestion(text, peak, plan.peak - peak, True)]
    return []
