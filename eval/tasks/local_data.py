"""Dataset loaders for the local lm-eval tasks in this folder (referenced from the YAMLs by ``!function``).

lm-eval calls a task's ``custom_dataset`` with the task metadata and ``dataset_kwargs`` as keyword arguments, so
``data_files`` below comes from the YAML and ``data_dir`` from ``TaskManager(metadata={"data_dir": ...})`` (the
``--data-dir`` option of ``eval harness``). Plain ``dataset_kwargs: {data_files: ...}`` would not do: ``datasets``
resolves relative data files against the *current directory*, not the YAML, so such a task would only work when
run from one particular folder.

Data directory, first found wins: ``data_dir`` metadata, ``$LLM_DISTILL_DATA_DIR``, then ``shared/data`` beside
the repository (``<repo>/../shared/data``, the layout of a clean clone next to the shared folder, or the same
beside any further ancestor).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets

REPO_ROOT = Path(__file__).resolve().parents[2]
# A level-1 WikiText heading (" = Title = ") starts a new article; " = = Section = = " lines do not.
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def resolve_data_dir(data_dir: str | None = None) -> Path:
    # Ancestors beyond the repo's parent too: a git worktree may sit one level deeper than a plain clone.
    beside = [p / "shared" / "data" for p in REPO_ROOT.parents]
    candidates = [data_dir, os.environ.get("LLM_DISTILL_DATA_DIR"), *beside]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    raise FileNotFoundError(
        "no data directory for the local lm-eval tasks: pass --data-dir (TaskManager metadata 'data_dir'), set "
        f"LLM_DISTILL_DATA_DIR, or place the shared data at {REPO_ROOT.parent / 'shared' / 'data'}"
    )


def _files(data_dir: str | None, data_files: dict[str, str]) -> dict[str, str]:
    root = resolve_data_dir(data_dir)
    out = {}
    for split, rel in data_files.items():
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"split {split!r}: {path} does not exist (data_dir={root})")
        out[split] = str(path)
    return out


def json_splits(data_dir: str | None = None, data_files: dict[str, str] | None = None, **_) -> datasets.DatasetDict:
    """One split per entry of ``data_files`` (paths relative to the data directory), read as JSON lines."""
    if not data_files:
        raise ValueError("json_splits needs dataset_kwargs.data_files in the task YAML")
    return datasets.load_dataset("json", data_files=_files(data_dir, data_files))


def _articles(path: str) -> list[str]:
    pages: list[list[str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if _ARTICLE_HEADING.match(line.rstrip("\n")) or not pages:
                pages.append([])
            pages[-1].append(line)
    return ["".join(p) for p in pages if "".join(p).strip()]


def wikitext_articles(
    data_dir: str | None = None, data_files: dict[str, str] | None = None, **_
) -> datasets.DatasetDict:
    """WikiText-2 token files (one paragraph per line) regrouped into one document per article, in a ``page``
    column, as in the hub's ``wikitext_document_level`` that lm-eval's own ``wikitext`` task reads."""
    if not data_files:
        raise ValueError("wikitext_articles needs dataset_kwargs.data_files in the task YAML")
    files = _files(data_dir, data_files)
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"page": _articles(path)}) for split, path in files.items()}
    )
