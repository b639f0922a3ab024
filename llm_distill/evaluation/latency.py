"""Latency and throughput of models' forward passes, timed interleaved so that they survive a busy machine.

All models of a comparison are timed in one process, in rounds. A round runs every model on example 1 (batch 1),
one right after the other, then every model on example 2, and so on (the order rotating from example to example),
then the same over the batches. Every forward is timed on its own.

Other processes only ever *add* time to a forward (they take the core away, evict caches), so the least disturbed
estimate of what a forward costs is the fastest of its repeats — the convention of Python's ``timeit``. The
headline figure of a model is therefore the *best of rounds*: for each example the fastest of its R runs, averaged
over the examples (``latency_ms_per_example``; throughput alike over the batches). Its spread is shown by the
rounds themselves (median and interquartile range of the per-round figures, ``latency_typical_ms`` and
``latency_rounds_iqr_ms``); the 95 % interval of every ratio comes from a bootstrap over rounds (the same resampled
rounds for all models, since a round times them side by side). A minimum has no useful bootstrap interval of its
own: resampled minima can only be larger. When the median round is much slower than the best, the report warns that
the machine was busy. Contention slows even the best runs (shared
caches, memory bandwidth), so absolute times stay inflated on a busy machine; what survives is the ratio of models
timed side by side (measured with ``eval/speed_check.py``: 1.44x interleaved at load 5 on 2 cores, where timing
each model alone gave 4.5x).

The thread count is pinned (default 1) while timing: intra-op threads wait for each other at every operator, so
one thread stalled by a neighbour stalls them all, and a 2-thread forward on a shared 2-core machine can take 10x
its quiet time; one thread per model degrades gracefully and measures the same on every machine.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .stats import percentile_interval, quantile

# Above these, the report says the timing was disturbed.
MAX_DISTURBANCE = 1.25  # median run / best run of a model
MIN_CPU_SHARE = 0.85  # CPU time the timing process got / (wall time x threads)
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class TimingTarget:
    """One model to time: ``make_batch(indices)`` returns its inputs for those examples, already on its device."""

    name: str
    model: torch.nn.Module
    make_batch: Callable[[Sequence[int]], dict[str, torch.Tensor]]
    num_examples: int


def _sync(device: torch.device) -> None:
    # CUDA kernels are asynchronous: without a sync the timer would measure the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def pinned_threads(threads: int | None):
    """Run the block with ``torch.set_num_threads(threads)`` (unchanged when None), restoring it afterwards."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads} must be >= 1 (or None to keep torch's {old})")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


class _Passes:
    """Prepared inputs of one target, and the seconds of every timed forward: ``times[kind][round][input]``."""

    def __init__(self, target: TimingTarget, batch_size: int):
        n = target.num_examples
        if n < 1:
            raise ValueError(f"{target.name}: num_examples={n} must be >= 1 to time a model")
        self.target = target
        self.device = next(target.model.parameters()).device
        self.inputs = {
            "singles": [target.make_batch([i]) for i in range(n)],
            "batches": [target.make_batch(list(range(s, min(s + batch_size, n)))) for s in range(0, n, batch_size)],
        }
        self.times: dict[str, list[list[float]]] = {"singles": [], "batches": []}
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, inputs: dict) -> float:
        """Seconds of one forward on ``inputs``."""
        _sync(self.device)
        cpu, start = time.process_time(), time.perf_counter()
        self.target.model(**inputs)
        _sync(self.device)
        wall = time.perf_counter() - start
        self.wall += wall
        self.cpu += time.process_time() - cpu
        return wall

    def table(self, kind: str) -> torch.Tensor:
        """``(rounds, inputs)`` float64 seconds."""
        return torch.tensor(self.times[kind], dtype=torch.float64)


def _interleaved_round(passes: list[_Passes], kind: str, round_index: int, record: bool = True) -> None:
    """Input i of every model, one model right after the other (the order rotating with i), then input i+1."""
    row = {id(p): [] for p in passes}
    for i in range(max(len(p.inputs[kind]) for p in passes)):
        shift = (round_index + i) % len(passes)
        for p in passes[shift:] + passes[:shift]:
            if i < len(p.inputs[kind]):
                row[id(p)].append(p.run(p.inputs[kind][i]))
    if record:
        for p in passes:
            p.times[kind].append(row[id(p)])


def best_of_rounds(times: torch.Tensor) -> torch.Tensor:
    """Sum over inputs of each input's fastest run: ``(..., rounds, inputs)`` -> ``(...)`` seconds."""
    return times.min(dim=-2).values.sum(-1)


def _round_resamples(rounds: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """``(resamples, rounds)`` round indices drawn with replacement; one draw shared by all models (paired)."""
    return torch.randint(0, rounds, (resamples, rounds), generator=torch.Generator().manual_seed(seed))


def _stable(passes: list[_Passes], target_rel_ci: float) -> bool:
    idx = _round_resamples(len(passes[0].times["singles"]), resamples=200)
    for p in passes:
        for kind in ("singles", "batches"):
            table = p.table(kind)
            best = float(best_of_rounds(table))
            lo, hi = percentile_interval(best_of_rounds(table[idx]))
            if best <= 0 or (hi - lo) / best > target_rel_ci:
                return False
    return True


@torch.no_grad()
def time_models(
    targets: Sequence[TimingTarget],
    *,
    batch_size: int = 8,
    warmup: int = 2,
    repeats: int = 20,
    max_repeats: int | None = None,
    threads: int | None = 1,
    target_rel_ci: float = 0.05,
) -> dict:
    """Time ``targets`` interleaved (see the module docstring); the first target is the reference of the ratios.

    Rounds continue past ``repeats`` (checked every 5, up to ``max_repeats``, default 2x ``repeats``) until the
    bootstrap spread of every model's best-of-rounds figures is within ``target_rel_ci``.

    Returns ``{"models": {name: {...}}, "ratios": {name: {...}}, "timing": {...}, "warnings": [...]}``. A model
    has ``latency_ms_per_example`` (batch 1) and ``throughput_examples_per_s`` (batches of ``batch_size``), the
    median round (``latency_typical_ms``, ``throughput_typical``), the rounds' interquartile ranges
    (``latency_rounds_iqr_ms``, ``throughput_rounds_iqr``) and every round (``latency_rounds_ms``,
    ``throughput_rounds``). A ratio has ``speedup`` (reference latency / this model's) and ``throughput_ratio`` (this
    model's throughput / the reference's), each with ``_ci`` and ``_verdict`` (faster, slower, within noise).
    """
    if not targets:
        raise ValueError("give at least one model to time")
    if len({t.name for t in targets}) != len(targets):
        raise ValueError(f"target names must be distinct; got {[t.name for t in targets]}")
    if repeats < 2:
        raise ValueError(f"repeats={repeats} must be >= 2")
    max_repeats = max(repeats, max_repeats if max_repeats is not None else 2 * repeats)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with pinned_threads(threads) as used_threads:
        passes = [_Passes(t, batch_size) for t in targets]
        for p in passes:
            p.target.model.eval()
        for w in range(warmup):
            _interleaved_round(passes, "singles", w, record=False)
            _interleaved_round(passes, "batches", w, record=False)
        for p in passes:
            p.wall = p.cpu = 0.0
        rounds = 0
        while rounds < max_repeats:
            _interleaved_round(passes, "singles", rounds)
            _interleaved_round(passes, "batches", rounds)
            rounds += 1
            if rounds >= repeats and (rounds - repeats) % 5 == 0 and _stable(passes, target_rel_ci):
                break
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    idx = _round_resamples(rounds)
    models, boot = {}, {}
    for p in passes:
        n = p.target.num_examples
        singles, batches = p.table("singles"), p.table("batches")
        boot[p.target.name] = (best_of_rounds(singles[idx]), best_of_rounds(batches[idx]))
        lat_rounds = (1000 * singles.sum(-1) / n).tolist()
        thr_rounds = (n / batches.sum(-1)).tolist()
        models[p.target.name] = {
            "latency_ms_per_example": 1000 * float(best_of_rounds(singles)) / n,
            "latency_typical_ms": statistics.median(lat_rounds),
            "latency_rounds_iqr_ms": [quantile(lat_rounds, 0.25), quantile(lat_rounds, 0.75)],
            "latency_rounds_ms": lat_rounds,
            "throughput_examples_per_s": n / float(best_of_rounds(batches)),
            "throughput_typical": statistics.median(thr_rounds),
            "throughput_rounds_iqr": [quantile(thr_rounds, 0.25), quantile(thr_rounds, 0.75)],
            "throughput_rounds": thr_rounds,
            "timed_examples": n,
            "cpu_share": p.cpu / (p.wall * used_threads) if p.wall > 0 else None,
        }
    ratios = {}
    ref = passes[0].target.name
    for p in passes[1:]:
        name = p.target.name
        entry = {}
        for key, col in (("speedup", 0), ("throughput_ratio", 1)):
            # Both are reference seconds / this model's seconds: > 1 means this model is faster.
            point = float(best_of_rounds(passes[0].table(("singles", "batches")[col])))
            point /= float(best_of_rounds(p.table(("singles", "batches")[col])))
            lo, hi = percentile_interval(boot[ref][col] / boot[name][col])
            # Resampled minima are biased the same way for both models; keep the measured ratio inside regardless.
            lo, hi = min(lo, point), max(hi, point)
            entry[key] = point
            entry[f"{key}_ci"] = [lo, hi]
            entry[f"{key}_verdict"] = "faster" if lo > 1 else "slower" if hi < 1 else "within noise"
        ratios[name] = entry
    total_wall = sum(p.wall for p in passes)
    timing = {
        "reference": ref,
        "estimator": "best of rounds",
        "threads": used_threads,
        "rounds": rounds,
        "stable": _stable(passes, target_rel_ci),
        "target_rel_ci": target_rel_ci,
        "batch_size": batch_size,
        "warmup": warmup,
        "cpu_share": sum(p.cpu for p in passes) / (total_wall * used_threads) if total_wall > 0 else None,
        "load_before": load_before,
        "load_after": load_after,
        "cpu_count": os.cpu_count(),
        "device": str(passes[0].device),
    }
    return {"models": models, "ratios": ratios, "timing": timing, "warnings": timing_warnings(models, timing)}


def timing_warnings(models: dict[str, dict], timing: dict) -> list[str]:
    """Plain-language warnings when the numbers of ``time_models`` should not be taken at face value."""
    out = []
    share = timing.get("cpu_share")
    if share is not None and share < MIN_CPU_SHARE and timing["device"] == "cpu":
        out.append(
            f"the machine was busy: the timing process got {share:.0%} of the CPU time it asked for, so absolute "
            "times are inflated (even the best runs); the speed-ups, measured side by side, are the figures to compare"
        )
    loads = [x for x in (timing.get("load_before"), timing.get("load_after")) if x is not None]
    cores = timing.get("cpu_count") or 1
    if loads and max(loads) > cores:
        out.append(f"load average up to {max(loads):.1f} on {cores} cores while timing (other processes were running)")
    for name, m in models.items():
        factor = m["latency_typical_ms"] / m["latency_ms_per_example"] if m["latency_ms_per_example"] else 1.0
        if factor > MAX_DISTURBANCE:
            out.append(f"{name}: the median run took {factor:.1f}x the best run (batch 1): timing was disturbed")
    if not timing["stable"]:
        out.append(
            f"after {timing['rounds']} rounds some figures were still uncertain by more than "
            f"±{timing['target_rel_ci']:.0%}; treat small speed differences as noise"
        )
    return out


def time_forward(
    model: torch.nn.Module,
    make_batch: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    num_examples: int,
    *,
    batch_size: int = 8,
    warmup: int = 2,
    repeats: int = 20,
    max_repeats: int | None = None,
    threads: int | None = 1,
) -> dict:
    """One model timed alone, with the same protocol as ``time_models`` (what a standalone measurement gives)."""
    out = time_models(
        [TimingTarget("model", model, make_batch, num_examples)],
        batch_size=batch_size,
        warmup=warmup,
        repeats=repeats,
        max_repeats=max_repeats,
        threads=threads,
    )
    return {**out["models"]["model"], "timing": out["timing"], "warnings": out["warnings"]}


def text_batcher(tokenizer, texts: Sequence[str | tuple[str, str]], device: torch.device, max_length: int):
    """``make_batch`` for classifiers: tokenise (pairs of) texts, pad to the longest in the batch."""

    def make(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [texts[i] for i in indices]
        if rows and isinstance(rows[0], tuple):
            enc = tokenizer(
                [r[0] for r in rows],
                [r[1] for r in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
        else:
            enc = tokenizer(list(rows), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    return make


def window_batcher(ids: torch.Tensor, length: int, device: torch.device):
    """``make_batch`` for causal LMs: example i is the token window ``ids[i*length:(i+1)*length]`` (all full)."""

    def make(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = torch.stack([ids[i * length : (i + 1) * length] for i in indices])
        return {"input_ids": rows.to(device), "attention_mask": torch.ones_like(rows).to(device)}

    return make
