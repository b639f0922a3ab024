"""A model card (README.md) for an exported student, in the Hub's format (YAML front matter + Markdown)."""

from __future__ import annotations

import os

import yaml


def _last_metrics(log_history: list[dict]) -> dict:
    keep = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") or key in ("kd_loss", "ce_loss", "hidden_loss", "attention_loss", "loss"):
                keep[key] = value
    return keep


def write_model_card(output_dir: str, meta: dict, log_history: list[dict]) -> None:
    front = {"library_name": "transformers", "tags": ["distillation", "llm_distill"]}
    if meta.get("teacher") and not os.path.isdir(str(meta["teacher"])):
        front["base_model"] = meta["teacher"]  # a hub id; a local folder means nothing to readers of the card
    weights = ", ".join(f"{k} {v:g}" for k, v in meta["weights"].items() if v)
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        "# Distilled student",
        "",
        f"Distilled from `{meta.get('teacher') or meta.get('teacher_logits_path')}` with llm_distill "
        f"{meta['llm_distill_version']} ({meta['task']}).",
        "",
        f"- divergence: `{meta['kd_loss']}` at temperature {meta['temperature']:g}"
        + (" (x T^2)" if meta["scale_by_t2"] else ""),
        f"- loss weights: {weights}",
    ]
    if meta.get("layer_map") is not None:
        lines.append(f"- layer map: `{meta['layer_map']}`")
    if meta.get("generation"):
        g = meta["generation"]
        lines.append(
            f"- generated completions: lmbda {g['lmbda']:g} (student samples), seq_kd {g['seq_kd']}, up to "
            f"{g['max_new_tokens']} tokens at sampling temperature {g['generation_temperature']:g}"
        )
    metrics = _last_metrics(log_history)
    if metrics:
        lines += ["", "## Last logged metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    lines += ["", "Full settings: `distillation.json`.", ""]
    with open(os.path.join(output_dir, "README.md"), "w") as fh:
        fh.write("\n".join(lines))
