"""Training curves from a ``trainer_state.json`` (the ``log_history`` written by ``transformers.Trainer``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

# Loss terms the distillation trainer logs separately, in plotting order.
LOSS_KEYS = ("loss", "kd_loss", "ce_loss", "hidden_loss", "attention_loss")
# Eval entries that are bookkeeping, not quality.
_EVAL_SKIP = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"}


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
    """``{metric: [(step, value), ...]}`` for every loss term and eval metric in the log history."""
    history = json.loads(Path(state_path).read_text(encoding="utf-8")).get("log_history", [])
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            wanted = key in LOSS_KEYS or (key.startswith("eval_") and key not in _EVAL_SKIP)
            if wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, []).append((int(step), float(value)))
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str) -> str:
    """Losses (left) and eval metrics (right) against the global step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [k for k in LOSS_KEYS if k in curves]
    evals = sorted(k for k in curves if k.startswith("eval_"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, label in ((axes[0], losses, "training losses"), (axes[1], evals, "eval metrics")):
        for key in keys:
            steps, values = zip(*curves[key])
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        ax.set_xlabel("step")
        ax.set_title(label if keys else f"{label}: none logged")
        if keys:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
