"""Training curves from ``trainer_state.json`` files (the ``log_history`` written by ``transformers.Trainer``).

A multi-stage recipe (TinyBERT: ``stage1-intermediate`` then ``stage2-prediction``) writes one folder per stage
under the run's ``output_dir``; each stage is a fresh Trainer whose steps start again at 1. ``run_curves`` joins the
stages that led to a student on one step axis and remembers where each stage began.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..export import METADATA_NAME

# Loss terms the distillation trainer logs separately, in plotting order.
LOSS_KEYS = ("loss", "kd_loss", "ce_loss", "hidden_loss", "attention_loss")
# Logged values between 0 and 1: drawn on their own axis.
FRACTION_KEYS = ("agreement", "eval_agreement", "eval_accuracy")
# Eval entries that are bookkeeping, not quality.
_EVAL_SKIP = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"}


@dataclass
class RunCurves:
    """``series[key] = [(global step, value), ...]``; ``stages = [(first global step, stage name), ...]``."""

    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stages: list[tuple[int, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    last_step: int = 0


def find_trainer_state(folder: str | Path) -> Path | None:
    """``folder/trainer_state.json`` if present, else the one of the latest ``checkpoint-<step>`` below it."""
    folder = Path(folder)
    direct = folder / "trainer_state.json"
    if direct.is_file():
        return direct
    found = []
    for ckpt in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
        if m and (ckpt / "trainer_state.json").is_file():
            found.append((int(m.group(1)), ckpt / "trainer_state.json"))
    return max(found)[1] if found else None


def read_curves(state_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for every loss term, agreement and eval metric in the log history."""
    history = json.loads(Path(state_path).read_text(encoding="utf-8")).get("log_history", [])
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            wanted = key in LOSS_KEYS or key == "agreement" or (key.startswith("eval_") and key not in _EVAL_SKIP)
            if wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, []).append((int(step), float(value)))
    return curves


def _teacher_of(folder: Path) -> object:
    try:
        return json.loads((folder / METADATA_NAME).read_text(encoding="utf-8")).get("teacher")
    except (OSError, ValueError):
        return None


def stage_folders(model_dir: str | Path) -> list[Path]:
    """The stage folders of the run that produced ``model_dir``, in training order, ending with ``model_dir``.

    Earlier stages are the sibling folders that hold a finished distillation run (``distillation.json`` and
    ``trainer_state.json``) with the same teacher, finished before ``model_dir`` (by the modification time of
    their ``trainer_state.json``: stages run one after the other). A plain fine-tuning run has no siblings.
    """
    model_dir = Path(model_dir)
    own = model_dir / "trainer_state.json"
    if not (own.is_file() and (model_dir / METADATA_NAME).is_file()):
        return [model_dir]
    teacher = _teacher_of(model_dir)
    finished = own.stat().st_mtime
    earlier = []
    for sib in model_dir.parent.iterdir():
        state = sib / "trainer_state.json"
        if sib == model_dir or not (sib.is_dir() and state.is_file() and (sib / METADATA_NAME).is_file()):
            continue
        if _teacher_of(sib) == teacher and state.stat().st_mtime < finished:
            earlier.append((state.stat().st_mtime, sib))
    return [p for _, p in sorted(earlier)] + [model_dir]


def run_curves(model_dir: str | Path) -> RunCurves | None:
    """All stages' curves on one global step axis; None when no stage logged anything."""
    run = RunCurves()
    offset = 0
    for folder in stage_folders(model_dir):
        state = find_trainer_state(folder)
        if state is None:
            continue
        curves = read_curves(state)
        global_step = json.loads(state.read_text(encoding="utf-8")).get("global_step") or 0
        steps = [s for series in curves.values() for s, _ in series]
        length = max([global_step, *steps]) if steps or global_step else 0
        run.stages.append((offset, folder.name))
        run.sources.append(str(state))
        for key, series in curves.items():
            run.series.setdefault(key, []).extend((offset + s, v) for s, v in series)
        offset += length
    run.last_step = offset
    return run if run.series else None


def plot_curves(run: RunCurves, path: str | Path, title: str) -> str:
    """Training losses (log scale), agreement/accuracy (0-1) and other eval metrics on their own axes, against
    the global step, with each stage boundary marked; eval values are drawn as points. Saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The eval loss terms repeat the training ones; the total eval loss stands for them.
    keys = {k: v for k, v in run.series.items() if k == "eval_loss" or not (k.startswith("eval_") and "loss" in k)}
    losses = [k for k in (*LOSS_KEYS, "eval_loss") if k in keys]
    fractions = [k for k in FRACTION_KEYS if k in keys]
    others = sorted(k for k in keys if k not in losses and k not in fractions)
    panels = [(losses, "losses (log scale)"), (fractions, "agreement / accuracy")] + (
        [(others, "other")] if others else []
    )
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.3), squeeze=False)
    starts = [start for start, _ in run.stages]
    for ax, (panel_keys, label) in zip(axes[0], panels):
        for key in panel_keys:
            if key.startswith("eval_"):
                steps, values = zip(*keys[key])
                ax.plot(steps, values, "o", markersize=7, label=f"{key} (eval)")
                continue
            # One line per stage: a new stage's first value is not a continuation of the last one's.
            by_stage: dict[int, list[tuple[int, float]]] = {}
            for step, value in keys[key]:
                by_stage.setdefault(bisect.bisect_right(starts, step - 1) - 1, []).append((step, value))
            colour = None
            for points in by_stage.values():
                steps, values = zip(*points)
                style = "o-" if len(points) == 1 else "-"
                (line,) = ax.plot(steps, values, style, linewidth=1.5, color=colour, label=None if colour else key)
                colour = line.get_color()
        if "loss" in label and all(v > 0 for k in panel_keys for _, v in keys[k]):
            ax.set_yscale("log")
        if label.startswith("agreement"):
            lo = min(v for k in panel_keys for _, v in keys[k])
            ax.set_ylim(max(0.0, min(0.5, lo - 0.05)), 1.0)
        for start, name in run.stages:
            if start > 0:
                ax.axvline(start, color="grey", linestyle="--", linewidth=1)
            ax.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                        textcoords="offset points", fontsize=8, color="dimgrey")  # fmt: skip
        ax.set_xlim(0, max(run.last_step, 1) * 1.03)  # room for the eval point at the last step
        ax.set_xlabel("optimizer step (all stages)")
        ax.set_title(label, pad=16)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
