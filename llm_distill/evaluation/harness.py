"""``eval harness``: run lm-evaluation-harness tasks on a saved causal LM (needs the ``eval`` extra, ``lm-eval``).

Standard task names (``hellaswag``, ``wikitext``, ...) need the Hub for their data. Offline, use the local tasks
shipped in ``eval/tasks`` (``wikitext2_local``, ``sst2_local``), which read the shared data folder:

    python eval/harness.py --model runs/student --tasks wikitext2_local sst2_local --data-dir ../shared/data \
        --limit 100 --output runs/student/harness.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .common import resolve_device, rnd, write_json

# eval/tasks beside the package in a source checkout; an installed package has no eval/ folder, so callers then
# pass include_path themselves.
LOCAL_TASKS_DIR = Path(__file__).resolve().parents[2] / "eval" / "tasks"


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "eval harness needs lm-evaluation-harness: pip install 'llm-distill[eval]' (or pip install lm-eval)"
        ) from err


def task_manager(include_path: str | Sequence[str] | None = None, data_dir: str | None = None, defaults: bool = True):
    """A ``TaskManager`` that also sees ``include_path`` (default: the shipped ``eval/tasks``) and passes
    ``data_dir`` to the local tasks' loaders through the task metadata."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is None:
        include_path = [str(LOCAL_TASKS_DIR)] if LOCAL_TASKS_DIR.is_dir() else None
    elif isinstance(include_path, str):
        include_path = [include_path]
    metadata = {"data_dir": str(Path(data_dir).resolve())} if data_dir else None
    return TaskManager(include_path=include_path, include_defaults=defaults, metadata=metadata)


def run_harness(
    model_path: str,
    tasks: Sequence[str],
    *,
    include_path: str | Sequence[str] | None = None,
    data_dir: str | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str = 1,
    max_length: int | None = None,
    device: str | None = "auto",
    dtype: str = "float32",
    bootstrap_iters: int = 0,
    seed: int = 0,
) -> dict:
    """``lm_eval.simple_evaluate`` with ``HFLM(pretrained=model_path)``; returns ``{"results": {task: {metric:
    value}}, "config": ...}`` with lm-eval's metric keys (e.g. ``"acc,none"``, ``"word_perplexity,none"``).

    ``bootstrap_iters=0`` skips the bootstrap standard errors (slow on CPU and not needed for a comparison).
    """
    _require_lm_eval()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(include_path, data_dir, include_defaults)
    # Names may be tasks, groups or tags; a path to a task YAML is passed through to lm-eval as is.
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        local = sorted(n for n in manager.all_tasks if n.endswith("_local"))
        raise ValueError(f"unknown lm-eval task(s) {unknown}; local tasks available: {local}")
    lm = HFLM(
        pretrained=model_path,
        backend="causal",
        device=str(resolve_device(device)),
        dtype=dtype,
        batch_size=batch_size,
        max_length=max_length,
    )
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    results = {
        task: {k: v for k, v in metrics.items() if k != "alias" and isinstance(v, (int, float))}
        for task, metrics in out["results"].items()
    }
    return {
        "model": model_path,
        "tasks": list(tasks),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "max_length": lm.max_length,
        "seconds": time.perf_counter() - start,
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        "results": results,
        "n_samples": out.get("n-samples"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval harness", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="saved AutoModelForCausalLM folder (or hub id when online)")
    p.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names, e.g. wikitext2_local sst2_local")
    p.add_argument(
        "--include-path", nargs="+", default=None, help=f"extra task YAML folders (default {LOCAL_TASKS_DIR})"
    )
    p.add_argument("--data-dir", default=None, help="data folder of the local tasks (default ../shared/data)")
    p.add_argument("--no-default-tasks", action="store_true", help="index only the include paths (faster offline)")
    p.add_argument("--limit", type=float, default=None, help="examples per task (<1: fraction); for quick checks")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", default="1", help="int or 'auto'")
    p.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the result as JSON to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    result = run_harness(
        args.model,
        args.tasks,
        include_path=args.include_path,
        data_dir=args.data_dir,
        include_defaults=not args.no_default_tasks,
        limit=limit,
        num_fewshot=args.num_fewshot,
        batch_size=batch_size,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    result = rnd(json.loads(json.dumps(result, default=str)))
    for task, metrics in result["results"].items():
        print(task, "  ".join(f"{k.split(',')[0]}={v}" for k, v in metrics.items()))
    if args.output:
        write_json(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
