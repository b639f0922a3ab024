"""Plan before you launch: memory per device and time per step of a recipe, from configs alone.

``llm-distill plan RECIPE`` (and ``llm-distill train RECIPE --dry-run``) print the same table: see ``cli.py``.
Library use::

    from llm_distill.recipes import load_recipe
    from llm_distill.plan import get_device, make_plan, render, run_spec

    plan = make_plan(run_spec(load_recipe("configs/causal_lm_kd.yaml")), get_device("h100-80gb"))
    print(render(plan))
"""

from .devices import DEVICES, Device, calibrate, cpu_device, get_device, parse_memory
from .memory import Footprints, Item, MemoryPlan, memory_plan
from .planner import Plan, make_plan
from .report import render, to_dict
from .spec import RunSpec, run_spec

__all__ = [
    "DEVICES",
    "Device",
    "Footprints",
    "Item",
    "MemoryPlan",
    "Plan",
    "RunSpec",
    "calibrate",
    "cpu_device",
    "get_device",
    "make_plan",
    "memory_plan",
    "parse_memory",
    "render",
    "run_spec",
    "to_dict",
]
