"""Where a run resumes from: the checkpoint the user named, else the newest one in its output folder."""

from __future__ import annotations

import logging
import os

from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


def resume_point(args, output_state: str = "resume") -> str | None:
    """An interrupted `train`/`finetune` run picks up where it stopped when run again with the same output_dir.

    ``output_state`` (from ``outdir.check_output_dir``): a ``"fresh"`` run (a new folder, or one being overwritten)
    starts from scratch unless ``resume_from_checkpoint`` names a checkpoint.
    """
    resume = args.resume_from_checkpoint
    if resume is None and output_state != "fresh" and os.path.isdir(args.output_dir):
        resume = get_last_checkpoint(args.output_dir)
        if resume:
            logger.warning("resuming from %s", resume)
    return resume
