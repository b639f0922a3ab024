"""Exported files get the permissions of every other file ``save_pretrained`` writes.

Why they would not: since safetensors 0.8 (safetensors/safetensors#764), ``safetensors.torch.save_file`` — which
``PreTrainedModel.save_pretrained`` calls for every weight shard — writes to a ``tempfile::NamedTempFile`` beside
the target and renames it into place, so that saving over a memory-mapped source cannot zero it. The tempfile crate
creates that file with mode 0600 whatever the umask, and the rename keeps it: ``model.safetensors`` ends up
owner-only (0600) while ``config.json`` and the tokenizer files, opened with ``open()``, get 0666 & ~umask (0644
under the usual umask 022). Another user, a serving container running as another uid, or a shared model folder
then cannot read the weights. Upstream: safetensors/safetensors#782 (open) and the fix proposed in #789.
"""

from __future__ import annotations

import os
from pathlib import Path

# The files a distillation run writes beside the student's save_pretrained files.
METADATA_NAME = "distillation.json"  # the run's settings and teacher, read by the reports
PROJECTIONS_NAME = "feature_projections.safetensors"  # hidden-state projections (checkpoints only)
TEACHER_STATE_NAME = "teacher_state.pt"  # a teacher that changes during the run (checkpoints only)


def process_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way is to set and restore it (briefly process-wide; harmless between saves).
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 masked by the umask."""
    return 0o666 & ~process_umask()


def match_umask(folder: str | os.PathLike, pattern: str = "*.safetensors") -> list[Path]:
    """Give the files matching ``pattern`` directly in ``folder`` the mode a plain ``open()`` would have given
    them (see the module docstring); returns the files whose mode changed. No-op on Windows."""
    if os.name != "posix":
        return []
    mode = default_file_mode()
    changed = []
    for path in sorted(Path(folder).glob(pattern)):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
            changed.append(path)
    return changed
