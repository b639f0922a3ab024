"""`llm-distill plan RECIPE [options] [--key value ...]` (and `llm-distill train RECIPE --dry-run`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..recipes import load_recipe, stage_recipes
from .devices import DEFAULT_GPU, DEVICE_NAMES, calibrate, cpu_device, get_device, parse_memory
from .planner import Plan, make_plan
from .report import render, to_dict
from .spec import run_spec
from .strategies import STRATEGIES

DESCRIPTION = (
    "Memory per device (itemised, with a verdict, the largest batch that fits and what to change) and time per "
    "step for a recipe, from the models' configs (meta device) and a length sample of the data: no weights are read."
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-distill plan",
        description=DESCRIPTION,
        epilog="Any other --key value overrides the recipe, as for `llm-distill train`.",
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML (the one `llm-distill train` takes)")
    p.add_argument("--devices", type=int, default=int(os.environ.get("WORLD_SIZE", 1)), help="devices (processes)")
    p.add_argument(
        "--device", choices=DEVICE_NAMES, help=f"device kind (default: cpu with use_cpu, else {DEFAULT_GPU})"
    )
    p.add_argument("--device-memory", type=parse_memory, help="memory per device, e.g. 80GB (default: the device's)")
    p.add_argument("--strategy", choices=STRATEGIES[1:], help="ddp | fsdp2 | zero2 | zero3 (default: ddp)")
    p.add_argument("--no-calibrate", action="store_true", help="cpu: skip measuring this machine's throughput")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    return p


def plans(argv: list[str]) -> list[tuple[str, Plan]]:
    """One plan per stage of the recipe (a recipe without stages is one stage)."""
    ns, overrides = parser().parse_known_args(argv)
    if ns.devices < 1:
        raise ValueError(f"--devices {ns.devices} is not accepted; it must be >= 1")
    out = []
    previous = None
    for name, recipe in stage_recipes(load_recipe(ns.recipe, overrides)):
        spec = run_spec(recipe, previous_stage=previous)
        previous = spec.student
        device_name = ns.device or ("cpu" if recipe.config.get("use_cpu") else DEFAULT_GPU)
        device = get_device(device_name)
        if device_name == "cpu":
            device = cpu_device(None if ns.no_calibrate else calibrate(spec))
        strategy = ns.strategy or ("ddp" if ns.devices > 1 else "single")
        out.append((name, make_plan(spec, device, devices=ns.devices, strategy=strategy, capacity=ns.device_memory)))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        parser().print_help()
        return 0
    ns, _ = parser().parse_known_args(argv)
    result = plans(argv)  # a user error reaches the CLI, which prints it as one line
    for name, plan in result:
        if name:
            print(f"=== stage {name}")
        print(render(plan))
        print()
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump({name or "run": to_dict(plan) for name, plan in result}, fh, indent=2, default=str)
    return 0
