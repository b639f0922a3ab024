"""Which training rows sample-level selection keeps, and the summary that is logged with them."""

from __future__ import annotations

import math

import torch

from .spec import DataSelection

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def row_scores(columns: dict[str, torch.Tensor], score: str) -> torch.Tensor:
    """``(N,)`` fp64 per-row score (NaN for a row without counted tokens)."""
    if score == "excess_loss":
        if "reference_nll" not in columns:
            raise ValueError("the scores hold no reference_nll; excess_loss needs the run's initial student scored")
        return columns["reference_nll"].double() - columns["teacher_nll"].double()
    return columns[score].double()


def _stats(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    q = torch.quantile(values, torch.tensor(QUANTILES, dtype=values.dtype))
    return {"mean": values.mean().item(), **{f"p{round(100 * p)}": v for p, v in zip(QUANTILES, q.tolist())}}


def choose_rows(columns: dict[str, torch.Tensor], spec: DataSelection) -> tuple[list[int], dict]:
    """The sample ids kept (in dataset order) and a summary: kept rows and tokens, score distributions, threshold.

    ``floor(keep * N + 1/2)`` of the N rows are kept, those with the highest (lowest) score; rows without counted
    tokens rank last, equal scores go to the earlier row. keep = 1 keeps every row.
    """
    scores = row_scores(columns, spec.score)
    ids = columns["sample_id"].long()
    n = ids.numel()
    n_keep = n if spec.keep >= 1.0 else int(math.floor(spec.keep * n + 0.5))
    key = scores if spec.highest else -scores
    key = torch.nan_to_num(key, nan=-math.inf)
    order = torch.sort(key, descending=True, stable=True).indices[:n_keep]
    kept = torch.zeros(n, dtype=torch.bool)
    kept[order] = True
    tokens = columns["num_tokens"].double()
    finite = ~torch.isnan(scores)
    summary = {
        "score": spec.score,
        "keep": spec.keep,
        "keep_highest": spec.highest,
        "rows": n,
        "kept_rows": int(kept.sum()),
        "kept_fraction": kept.sum().item() / max(n, 1),
        "kept_token_fraction": (tokens[kept].sum() / tokens.sum().clamp_min(1)).item(),
        "threshold": scores[order[-1]].item() if n_keep else None,
        "scores_all": _stats(scores[finite]),
        "scores_kept": _stats(scores[kept & finite]),
    }
    return ids[kept].tolist(), summary


def select_rows(dataset, keep_ids: list[int]):
    """The rows of ``dataset`` whose sample id is kept, in their original order (the dataset itself if all are)."""
    if len(keep_ids) == len(dataset):
        return dataset
    wanted = set(keep_ids)
    return dataset.select([i for i, sid in enumerate(dataset["sample_id"]) if int(sid) in wanted])
