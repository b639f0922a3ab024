"""The scores file of sample-level selection: per-row scores written once beside the run, fingerprinted like the
logit store (same fields, same refusal naming the field), atomically, and reused by every run that matches.

Layout of the folder::

    manifest.json         format, fingerprint (teacher, tokenizer, data, task, max_length), the reference model's
                          weights hash (excess_loss), the file's sha256, the number of rows
    scores.safetensors    sample_id, num_tokens (int64) and teacher_nll, teacher_entropy[, reference_nll] (fp32),
                          one entry per training row
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load

from ..teacher.store.fingerprint import FingerprintMismatchError, compare_fingerprints
from ..teacher.store.format import atomic_write, encode_shard, sha256_file, write_json_atomic

FORMAT = "llm_distill.data_scores"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCORES = "scores.safetensors"


class ScoresError(RuntimeError):
    """A scores folder is incomplete, corrupted, or lacks what the run needs."""


def write_scores(path, columns: dict[str, torch.Tensor], fingerprint: dict, reference_hash: str | None) -> Path:
    """Write ``columns`` and their manifest to ``path``: the data first, then the manifest that makes it valid."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / SCORES, encode_shard(columns, {"format": FORMAT}))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "reference_weights_hash": reference_hash,
        "columns": sorted(columns),
        "rows": int(columns["sample_id"].numel()),
        "sha256": sha256_file(path / SCORES),
    }
    write_json_atomic(path / MANIFEST, manifest)
    return path


def scores_exist(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_scores(path, *, expected: dict, reference_hash: str | None = None) -> dict[str, torch.Tensor]:
    """The columns of a finished scores folder, after checking that it was written for this run.

    ``expected``: a fingerprint (fields left None are not checked); ``reference_hash``: the weights hash of the
    reference model the run scores excess loss with (then the folder must hold ``reference_nll`` of that model).
    """
    path = Path(path)
    where = f"data scores at {path}"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ScoresError(f"{where}: cannot read {MANIFEST} ({err}); delete the folder to score again") from err
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ScoresError(f"{where}: not a version-{FORMAT_VERSION} {FORMAT} folder; delete it to score again")
    compare_fingerprints(manifest["fingerprint"], expected, where=where)
    if reference_hash is not None:
        stored = manifest.get("reference_weights_hash")
        if stored != reference_hash:
            raise FingerprintMismatchError(
                f"{where} was written with reference_weights_hash={stored!r} but this run's initial student has "
                f"{reference_hash!r}; excess_loss is scored against the run's own initial student: set "
                "data_selection.scores_path to another folder (or delete this one)",
                "reference_weights_hash",
                stored,
                reference_hash,
            )
    if sha256_file(path / SCORES) != manifest["sha256"]:
        raise ScoresError(f"{where}: {SCORES} does not match its checksum; delete the folder to score again")
    return load((path / SCORES).read_bytes())
