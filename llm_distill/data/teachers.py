"""Per-row columns that teacher sources read: the context teacher's own prompt, and each row's routed teacher.

Both are computed from the raw rows (before tokenization drops their columns) and added beside the tokenized
ones, row for row; packed text has no rows of its own, so neither applies to it.
"""

from __future__ import annotations

import string

from datasets import Dataset

from .config import DataConfig


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _fill(template: str, row: dict, cfg: DataConfig, prompt: str) -> str:
    values = {k: v for k, v in row.items() if isinstance(v, str | int | float)}
    values.update(prompt=prompt, response=row.get(cfg.response_column, values.get("response")))
    missing = [name for name in template_fields(template) if values.get(name) is None]
    if missing:
        raise ValueError(
            f"teacher_prompt names {missing}, which this dataset's rows lack; available: prompt, response, "
            f"{', '.join(sorted(k for k in values if k not in ('prompt', 'response')))}"
        )
    return template.format(**values)


def teacher_prompt_ids(raw: Dataset, tokenizer, cfg: DataConfig, template: str) -> list[list[int]]:
    """The teacher's prompt ids per raw row: ``template`` filled with the row's columns (``{prompt}`` is the
    student's prompt text, ``{response}`` the reference completion), encoded exactly as the student's prompt is."""
    if cfg.task != "instruction":
        raise ValueError(
            f"teacher_prompt needs dataset.task='instruction' (a prompt and a completion), got {cfg.task!r}"
        )
    out = []
    for row in raw:
        if cfg.messages_column:
            messages = [dict(m) for m in row[cfg.messages_column][:-1]]
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if not users:
                raise ValueError(
                    f"{cfg.messages_column}: teacher_prompt rewrites the last user turn, but there is none"
                )
            last = users[-1]
            messages[last]["content"] = _fill(template, row, cfg, messages[last]["content"])
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(_fill(template, row, cfg, row[cfg.prompt_column]))["input_ids"]
        out.append(list(ids))
    return out


def teacher_indices(raw: Dataset, column: str, names: list[str]) -> list[int]:
    """Each row's teacher as an index into ``names``; the column may hold names or 0-based indices."""
    if column not in raw.column_names:
        raise ValueError(f"teacher_column={column!r} is not a column of the dataset; available: {raw.column_names}")
    out = []
    for value in raw[column]:
        if isinstance(value, str) and value in names:
            out.append(names.index(value))
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            out.append(value)
        else:
            raise ValueError(
                f"teacher_column={column!r} holds {value!r}, which names no teacher; accepted: {names} or 0.."
                f"{len(names) - 1}"
            )
    return out


def add_teacher_columns(
    encoded: Dataset,
    raw: Dataset,
    tokenizer,
    cfg: DataConfig,
    *,
    teacher_prompt: str | None = None,
    teacher_column: str | None = None,
    teacher_names: list[str] | None = None,
) -> Dataset:
    """``encoded`` with ``teacher_prompt_ids`` and/or ``teacher_index`` added (one value per raw row)."""
    if (teacher_prompt or teacher_column) and (cfg.task == "text" and cfg.packing):
        raise ValueError(
            "teacher_prompt / teacher_column need one row per example; packed text (dataset.packing) has none"
        )
    if teacher_prompt:
        encoded = encoded.add_column("teacher_prompt_ids", teacher_prompt_ids(raw, tokenizer, cfg, teacher_prompt))
    if teacher_column:
        encoded = encoded.add_column("teacher_index", teacher_indices(raw, teacher_column, list(teacher_names or [])))
    return encoded
