"""Runs are never mixed: an output folder records the recipe that trains into it, and another recipe is refused.

``RUN_RECORD`` (written when training starts) holds the run's effective settings. Running again into the same folder:
- with the same settings (apart from ``RESUMABLE``: logging, saving, evaluation, length) resumes from the newest
  checkpoint, or says the run is finished;
- with other settings is refused, naming what differs, unless ``overwrite_output_dir`` (then the old checkpoints go);
- a folder with a trained model or checkpoints but no record is refused the same way (it cannot prove its recipe).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from .._version import __version__

logger = logging.getLogger("llm_distill")

RUN_RECORD = "llm_distill_run.json"
# Settings that may differ when a run is resumed: how it is logged, saved, evaluated and how long it goes on (the
# LR schedule follows the new length). Everything else changes what is trained and so names another run.
RESUMABLE_PREFIXES = ("logging_", "save_", "eval_", "push_to_hub", "hub_", "dataloader_", "log_", "report_")
RESUMABLE = {
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "max_steps",
    "num_train_epochs",
    "run_name",
    "use_cpu",
    "project",
    "trackio_space_id",
    "disable_tqdm",
    "per_device_eval_batch_size",
    "prediction_loss_only",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "include_for_metrics",
    "batch_eval_metrics",
    "do_eval",
    "do_predict",
    "skip_memory_metrics",
    "max_eval_samples",
    "eval_path",
    "eval_split",
}
# Files that say a folder holds the result of a run (a model, or the state of a finished Trainer).
FINISHED_MARKER = "trainer_state.json"
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")


def run_settings(args, recipe) -> dict:
    """What defines a run: every training setting but the resumable ones, and the student and dataset blocks."""
    config = {k: v for k, v in args.to_dict().items() if not _resumable(k)}
    dataset = {k: v for k, v in recipe.dataset.items() if not _resumable(k)}
    return {"config": config, "student": recipe.student, "dataset": dataset}


def _resumable(key: str) -> bool:
    return key in RESUMABLE or key.startswith(RESUMABLE_PREFIXES) or key.startswith("_")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    keys = set(old) | set(new)
    if prefix == "config.":
        # The config holds every field, so a field that the record lacks was added by a later version of
        # llm_distill, after the run started; only fields that both know can differ. (The student and dataset
        # blocks hold what the recipe wrote, so a key missing on one side is a real difference there.)
        keys = set(old) & set(new)
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _normalised(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, enums -> values, as read back


def has_results(output_dir: str) -> bool:
    if not os.path.isdir(output_dir):
        return False
    names = set(os.listdir(output_dir))
    return bool(names & {FINISHED_MARKER, *MODEL_FILES}) or any(n.startswith("checkpoint-") for n in names)


def check_output_dir(args, recipe) -> str:
    """``"fresh"``, ``"resume"`` or ``"finished"`` for a run into ``args.output_dir``; refuses another run's folder."""
    output_dir = args.output_dir
    if args.overwrite_output_dir or not has_results(output_dir):
        return "fresh"
    record_path = os.path.join(output_dir, RUN_RECORD)
    hint = "use another output_dir, or --overwrite_output_dir true to replace it (its checkpoints are deleted)"
    if not os.path.isfile(record_path):
        raise ValueError(
            f"output_dir={output_dir!r} already holds a trained model or checkpoints that no llm_distill run record "
            f"({RUN_RECORD}) describes, so it cannot be resumed or kept safely; {hint}"
        )
    with open(record_path) as fh:
        recorded = json.load(fh)
    differences = _differences(recorded.get("settings", {}), _normalised(run_settings(args, recipe)))
    if differences:
        shown = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
        raise ValueError(f"output_dir={output_dir!r} holds a run of another recipe ({shown}); {hint}")
    return "finished" if os.path.exists(os.path.join(output_dir, FINISHED_MARKER)) else "resume"


def start_run(args, recipe) -> None:
    """Before training (main process): clear what ``overwrite_output_dir`` replaces and record this run's settings."""
    if not args.should_save:
        return
    output_dir = args.output_dir
    if args.overwrite_output_dir and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith("checkpoint-") or name == FINISHED_MARKER:
                path = os.path.join(output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                logger.warning("overwrite_output_dir: removed %s", path)
    os.makedirs(output_dir, exist_ok=True)
    record = {"llm_distill_version": __version__, "settings": _normalised(run_settings(args, recipe))}
    tmp = os.path.join(output_dir, f".{RUN_RECORD}.tmp")
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(output_dir, RUN_RECORD))
