"""Sample-level data selection as a step of a recipe: score the training rows with the teacher (and, for excess
loss, with the run's initial student), write the scores beside the run, keep the top fraction of rows.

``llm-distill score-data RECIPE`` (``score_data.py``) runs the step alone; ``train`` and ``cache-logits`` run it (or
reuse its scores) before they build anything that depends on the rows, so a logit store is written for the rows
training will read.
"""

from __future__ import annotations

import json
import logging
import os

from ..data import DistillationCollator
from ..selection.rows import choose_rows, select_rows
from ..selection.scores import read_scores, scores_exist, write_scores
from ..selection.scoring import score_rows
from ..tasks import load_model
from ..teacher.store.fingerprint import hash_dataset, hash_state_dict, make_fingerprint

logger = logging.getLogger("llm_distill")
SUMMARY_NAME = "data_selection.json"


def scores_path(args) -> str:
    return args.selection.scores_path or os.path.join(args.output_dir, "data_scores")


def _model(value):
    return value() if callable(value) and not hasattr(value, "parameters") else value


def ensure_scores(args, task: str, train_ds, tokenizer, *, max_length: int, teacher=None, reference=None) -> dict:
    """The scores of ``train_ds`` for this run: read from ``scores_path(args)`` when they match the run, else
    computed (on the main process; the others wait and read them).

    ``teacher`` / ``reference``: models, zero-argument callables that build them, or None (the teacher is then loaded
    from ``teacher_model_name_or_path``). The reference (the run's initial student) is needed for excess_loss only.
    """
    spec = args.selection
    path = scores_path(args)
    excess = spec.score == "excess_loss"
    reference = _model(reference) if excess else None
    if excess and reference is None:
        raise ValueError("data_selection.score='excess_loss' scores against the run's initial student; none was built")
    reference_hash = hash_state_dict(reference) if excess else None
    expected = make_fingerprint(
        teacher_id=args.teacher_model_name_or_path,
        tokenizer=tokenizer,
        dataset_fingerprint=hash_dataset(train_ds),
        task=task,
        max_length=max_length,
    )
    with args.main_process_first(desc="score data"):
        if not scores_exist(path):
            _score(args, task, train_ds, tokenizer, path, expected, teacher, reference, reference_hash)
        else:
            logger.info("data selection: reusing the scores in %s", path)
    return read_scores(path, expected=expected, reference_hash=reference_hash)


def _score(args, task, train_ds, tokenizer, path, expected, teacher, reference, reference_hash) -> None:
    spec = args.selection
    teacher = _model(teacher)
    if teacher is None:
        if not args.teacher_model_name_or_path:
            raise ValueError("data_selection scores the data with the teacher: set teacher_model_name_or_path")
        teacher = load_model(args.teacher_model_name_or_path, task, dtype=args.teacher_dtype)
    common = dict(
        task=task,
        vocab_size=None if task == "sequence_classification" else len(tokenizer),
        batch_size=spec.batch_size,
        device=args.device,
    )
    collator = DistillationCollator(tokenizer)
    logger.info("data selection: scoring %d training rows with the teacher", len(train_ds))
    scored = score_rows(teacher, train_ds, collator, desc="teacher", **common)
    columns = {
        "sample_id": scored["sample_id"],
        "num_tokens": scored["num_tokens"],
        "teacher_nll": scored["nll"],
        "teacher_entropy": scored["entropy"],
    }
    if reference is not None:
        logger.info("data selection: scoring %d training rows with the initial student", len(train_ds))
        columns["reference_nll"] = score_rows(reference, train_ds, collator, entropy=False, desc="student", **common)[
            "nll"
        ]
    fingerprint = {**expected, "teacher_weights_hash": hash_state_dict(teacher)}
    write_scores(path, columns, fingerprint, reference_hash)
    logger.info("data selection: scores written to %s", path)


def select_samples(args, task: str, train_ds, tokenizer, *, max_length: int, teacher=None, reference=None):
    """``train_ds`` narrowed to the kept rows when the run selects samples; unchanged otherwise. Writes the
    selection's summary (kept rows and tokens, score distribution of all and of the kept rows) to the output dir."""
    spec = args.selection
    if spec is None or spec.level != "sample":
        return train_ds
    columns = ensure_scores(
        args, task, train_ds, tokenizer, max_length=max_length, teacher=teacher, reference=reference
    )
    keep_ids, summary = choose_rows(columns, spec)
    summary["scores_path"] = scores_path(args)
    logger.info("data selection: %s", json.dumps(summary))
    if args.should_save:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, SUMMARY_NAME), "w") as fh:
            json.dump(summary, fh, indent=2)
    return select_rows(train_ds, keep_ids)
