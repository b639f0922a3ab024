"""Whether a run fits: the peak at any batch size, and the largest per-device batch under a memory capacity."""

from __future__ import annotations

from .devices import Device
from .memory import Footprints, memory_plan
from .spec import RunSpec

MAX_BATCH = 1 << 16


def peak_at(spec: RunSpec, footprints: Footprints, batch: int, strategy: str, devices: int, device: Device) -> int:
    fp = footprints.at(batch)
    runtime = (device.runtime, device.runtime_note)
    return memory_plan(spec, batch, fp, strategy=strategy, devices=devices, runtime=runtime).peak


def largest_batch(
    spec: RunSpec, footprints: Footprints, capacity: int, strategy: str, devices: int, device: Device
) -> int:
    """The largest per-device batch whose peak fits (peaks grow with the batch): doubling, then bisection.
    0 when not even one row fits."""

    def fits(b: int) -> bool:
        return peak_at(spec, footprints, b, strategy, devices, device) <= capacity

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= MAX_BATCH and fits(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_BATCH:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
