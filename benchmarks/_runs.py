"""Running CLI verbs for the quality benchmarks: finished runs are reused, so an interrupted benchmark resumes.

Training time is the Trainer's own measurement (`train_runtime` in trainer_state.json); steps without a Trainer
(building a logit store) are timed here once and the time is kept in ``timings.json`` beside their output.
"""

from __future__ import annotations

import json
import os
import shlex
import time


def _main(argv: list[str]) -> str:
    from llm_distill.cli import main

    if main(argv) != 0:
        raise RuntimeError(f"llm-distill {' '.join(argv)} failed")
    return "llm-distill " + shlex.join(argv)


def train_seconds(run_dirs: list[str]) -> float:
    """Training wall time as the Trainer measured it (`train_runtime`), summed over stages."""
    total = 0.0
    for d in run_dirs:
        with open(os.path.join(d, "trainer_state.json")) as fh:
            total += sum(e.get("train_runtime", 0.0) for e in json.load(fh)["log_history"])
    return total


def run_training(verb: str, recipe: str, overrides: list[str], run_dirs: list[str]) -> tuple[float, str]:
    """``train``/``finetune`` unless every run dir is finished; returns (training seconds, the shell command)."""
    argv = [verb, recipe, *overrides]
    command = "llm-distill " + shlex.join(argv)
    if not all(os.path.exists(os.path.join(d, "trainer_state.json")) for d in run_dirs):
        command = _main(argv)
    return train_seconds(run_dirs), command


def run_timed(verb: str, recipe: str, overrides: list[str], output_dir: str) -> tuple[float, str]:
    """Any other verb, timed end to end, unless its time was already recorded for ``output_dir``."""
    argv = [verb, recipe, *overrides]
    timings_path = os.path.join(os.path.dirname(output_dir.rstrip("/")) or ".", "timings.json")
    timings = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    key = os.path.basename(output_dir.rstrip("/"))
    if key not in timings or not os.path.exists(output_dir):
        start = time.perf_counter()
        _main(argv)
        timings[key] = time.perf_counter() - start
        with open(timings_path, "w") as fh:
            json.dump(timings, fh, indent=2)
    return timings[key], "llm-distill " + shlex.join(argv)
