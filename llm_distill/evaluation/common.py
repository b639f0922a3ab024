"""Shared helpers for the evaluation verbs: data sources, model loading, sizes and the one rounding rule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..data import load_split
from ..tasks import DTYPES, task_of_class_name
from ..tasks import torch_dtype as resolve_dtype  # noqa: F401  (the verbs' name for it)

REPORT_DIGITS = 4


def rnd(value: Any, digits: int = REPORT_DIGITS) -> Any:
    """The single rounding rule used for everything a report prints (JSON and Markdown hold the same numbers).

    Floats are rounded to ``digits`` significant-ish decimals (fixed decimals for |x| >= 1e-3, significant digits
    below, so a KL of 3e-6 does not print as 0); ints, None and strings pass through; containers recurse.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0.0:
            return value
        if abs(value) >= 1e-3:
            return round(value, digits)
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rnd(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rnd(v, digits) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return rnd(value.item(), digits)
    raise TypeError(f"cannot round a value of type {type(value).__name__} for a report")


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` -> cuda if available, else mps, else cpu."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def load_table(source: str, split: str = "validation", config_name: str | None = None, limit: int | None = None):
    """Load a dataset split from a local file (json/jsonl/csv/tsv/txt/parquet), a saved folder or a hub id."""
    ds = load_split(source, config_name, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def check_columns(ds, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{what} column(s) {missing} not in the dataset; its columns are {ds.column_names}")


def load_text(source: str, text_column: str = "text", split: str = "test", config_name: str | None = None) -> str:
    """Raw text to score: a ``.txt`` file is read verbatim; a dataset's ``text_column`` rows are joined with
    blank lines (as in the Hugging Face perplexity guide for WikiText)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".txt", ".md", ".raw", ""):
        return path.read_text(encoding="utf-8")
    ds = load_table(source, split=split, config_name=config_name)
    check_columns(ds, [text_column], "text")
    return "\n\n".join(ds[text_column])


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def safetensors_bytes(folder: str | Path) -> int | None:
    """Bytes of the ``*.safetensors`` files directly in ``folder`` (checkpoints below it are not counted);
    None if there are none (e.g. a hub id or a .bin-only folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


def model_kind(path: str) -> str:
    """``"classification"`` or ``"causal_lm"`` from the saved config's architectures."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    archs = config.architectures or []
    tasks = {task_of_class_name(a) for a in archs}
    if "sequence_classification" in tasks:
        return "classification"
    if "causal_lm" in tasks:
        return "causal_lm"
    raise ValueError(
        f"cannot tell what {path!r} is from config.architectures={archs}; expected a *ForSequenceClassification or "
        "*ForCausalLM model"
    )


def write_json(data: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def add_common_args(parser, *, device: bool = True, batch_size: int = 16) -> None:
    if device:
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
        parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model dtype (default float32)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"per forward (default {batch_size})")
    parser.add_argument("--output", default=None, help="write the result as JSON to this file")
