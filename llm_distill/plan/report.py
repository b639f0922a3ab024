"""The plan as a table (what ``llm-distill plan`` and ``train --dry-run`` print) and as JSON."""

from __future__ import annotations

from .planner import Plan

NAME_WIDTH = 46
COLUMN = 12


def fmt_bytes(n: float) -> str:
    if abs(n) >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _header(plan: Plan) -> list[str]:
    spec = plan.spec
    s = spec.student
    dt = lambda d: str(d).replace("torch.", "")  # noqa: E731
    lines = [f"plan: {spec.source or '(command line)'}"]
    student = f"student {s.model_class.__name__}: {s.params / 1e6:.1f} M params, {s.num_layers} layers, {dt(s.dtype)}"
    if s.adapter_params:
        student += f", LoRA {s.adapter_params / 1e6:.2f} M trainable"
    lines.append(student)
    for t in spec.teachers:
        lines.append(
            f"teacher {t.name} ({t.shape.model_class.__name__}): {t.shape.params / 1e6:.1f} M params, "
            f"{t.shape.num_layers} layers, {dt(t.shape.dtype)}, live"
        )
    if spec.store:
        lines.append(f"teacher: cached {spec.store.mode} targets, width {spec.store.width} ({spec.store.source})")
    path = f"fused loss, chunk {spec.chunk}" if spec.fused else "materialised logits"
    features = []
    if spec.hidden_pairs:
        features.append(f"hidden states x {len(spec.hidden_pairs)} layers")
    if spec.attention_pairs:
        features.append(f"attention maps x {len(spec.attention_pairs)} layers")
    lines.append(
        f"{spec.task}: batch {spec.batch} x {spec.seq} tokens ({spec.lengths.source}), accumulation "
        f"{spec.grad_accum}, {spec.precision}{' autocast' if spec.autocast else ''}, {path}"
        + (f", {', '.join(features)}" if features else "")
        + (", gradient checkpointing" if spec.gradient_checkpointing else "")
    )
    lines.append(f"device: {plan.device.name} ({fmt_bytes(plan.capacity)}) x {plan.devices}, strategy {plan.strategy}")
    return lines


def _memory_table(plan: Plan) -> list[str]:
    mem = plan.memory
    head = "memory per device".ljust(NAME_WIDTH) + "".join(p.rjust(COLUMN) for p in mem.phases)
    lines = [head]
    for item in mem.items:
        cells = "".join((fmt_bytes(item.at(p)) if item.at(p) else "-").rjust(COLUMN) for p in mem.phases)
        lines.append(f"  {item.name}".ljust(NAME_WIDTH) + cells + (f"   {item.note}" if item.note else ""))
    lines.append("  total".ljust(NAME_WIDTH) + "".join(fmt_bytes(mem.total(p)).rjust(COLUMN) for p in mem.phases))
    return lines + [f"  ({note})" for note in mem.notes]


def _verdict(plan: Plan) -> list[str]:
    mem = plan.memory
    share = 100 * mem.peak / plan.capacity if plan.capacity else float("inf")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines = [
        f"peak: {fmt_bytes(mem.peak)} ({mem.peak_phase}) of {fmt_bytes(plan.capacity)} ({share:.0f} %): {verdict}",
        f"largest per-device batch that fits: {plan.largest_batch}"
        + ("" if plan.largest_batch else " (not even one row)"),
    ]
    for problem in plan.problems:
        lines.append(f"problem: {problem}")
    if plan.suggestions:
        lines.append("what to change (peak after the change, memory saved):")
        for s in plan.suggestions:
            mark = "fits" if s.fits else "does not fit"
            lines.append(f"  {s.change}: {fmt_bytes(s.peak)}, saves {fmt_bytes(s.saves)} -> {mark}")
    return lines


def _time(plan: Plan) -> list[str]:
    f = plan.flops
    parts = [
        ("student fwd+bwd", f.student_blocks),
        ("recompute", f.recompute),
        ("lm_head + loss", f.student_head),
        ("teacher fwd", f.teacher),
        ("generation", f.generation),
    ]
    text = ", ".join(f"{name} {value / 1e12:.3g}" for name, value in parts if value)
    lines = [f"flops per optimizer step per device (TFLOP): {text}; total {f.total / 1e12:.3g}"]
    device = plan.device
    if device.rates:
        r = device.rates
        parts = [f"{k} block {r[k] / 1e9:.1f} GFLOP/s" for k in ("student", "teacher") if k in r]
        parts += [f"loss {r['head'] / 1e9:.1f} GFLOP/s"] if "head" in r else []
        parts += [f"optimizer {r['optimizer'] / 1e6:.0f} M params/s"]
        rates = ", ".join(parts)
        how = f"measured on this CPU: {rates}"
    elif plan.step_seconds is not None:
        peak = device.peak[plan.spec.precision]
        how = f"{plan.spec.precision} peak {peak / 1e12:.0f} TFLOP/s x {device.utilisation:.0%} utilisation (assumed)"
    else:
        how = "no throughput known for this device"
    if plan.step_seconds is None:
        return lines + [f"time: {how}"]
    steps = plan.total_steps
    total = f"; {steps} steps: {fmt_seconds(plan.total_seconds)}" if steps else " (total: set max_steps or data)"
    return lines + [f"time per step: {fmt_seconds(plan.step_seconds)} ({how}){total}"]


def render(plan: Plan) -> str:
    """The plan's table, verdict, suggestions and time, as printed."""
    return "\n".join(_header(plan) + [""] + _memory_table(plan) + [""] + _verdict(plan) + [""] + _time(plan))


def to_dict(plan: Plan) -> dict:
    mem = plan.memory
    return {
        "source": plan.spec.source,
        "device": plan.device.name,
        "devices": plan.devices,
        "strategy": plan.strategy,
        "capacity": plan.capacity,
        "batch": plan.spec.batch,
        "seq": plan.spec.seq,
        "phases": {p: mem.total(p) for p in mem.phases},
        "peak": mem.peak,
        "peak_phase": mem.peak_phase,
        "fits": plan.fits,
        "largest_batch": plan.largest_batch,
        "items": [{"name": i.name, "group": i.group, "bytes": i.bytes, "note": i.note} for i in mem.items],
        "suggestions": [s.__dict__ for s in plan.suggestions],
        "problems": plan.problems,
        "flops": {**plan.flops.__dict__, "total": plan.flops.total},
        "step_seconds": plan.step_seconds,
        "total_steps": plan.total_steps,
        "rates": plan.device.rates,
    }
