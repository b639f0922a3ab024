"""The sample-level scoring pass: a model run once over the training rows, giving each row the mean NLL and mean
entropy of the model's distribution over the row's counted tokens (the tokens the loss counts, ``tasks.targets``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..losses.selection import logit_row_stats
from ..tasks import targets
from ..teacher.base import model_inputs

logger = logging.getLogger(__name__)


def score_rows(
    model: nn.Module,
    dataset,
    collator,
    *,
    task: str,
    vocab_size: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    entropy: bool = True,
    desc: str = "model",
) -> dict[str, torch.Tensor]:
    """Per training row, in dataset order: ``sample_id`` and ``num_tokens`` (int64), ``nll`` and ``entropy``
    (fp32 means over its counted tokens; NaN for a row with none).

    Args:
        model: run in eval mode under ``no_grad`` (its mode is restored afterwards).
        dataset: rows with input_ids, attention_mask, labels and sample_id; collator: rows -> padded batch.
        vocab_size: leading logit columns that are real tokens (token tasks), None for classification.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {"sample_id": [], "num_tokens": [], "nll": [], "entropy": []}
    total = len(dataset)
    try:
        for start in range(0, total, batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, total))]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(rows).items()}
            with torch.no_grad():
                logits = model(**model_inputs(batch), return_dict=True).logits
            mask, labels = targets(batch, task)
            if labels is None:
                raise ValueError("data selection scores the data's own labels; the training rows have none")
            logits = logits if vocab_size is None else logits[..., :vocab_size]
            where = mask.nonzero()
            row_of = where[:, 0]
            nll, ent = logit_row_stats(logits[mask], labels[mask], nll=True, entropy=entropy)
            n = len(rows)
            count = torch.zeros(n, device=device).index_add_(0, row_of, torch.ones_like(nll))
            out["nll"].append(torch.zeros(n, device=device).index_add_(0, row_of, nll) / count)
            if entropy:
                out["entropy"].append(torch.zeros(n, device=device).index_add_(0, row_of, ent) / count)
            out["num_tokens"].append(count.long())
            out["sample_id"].append(batch["sample_id"].long())
            if (start // batch_size) % 50 == 0:
                logger.info("scoring with the %s: %d / %d rows", desc, min(start + batch_size, total), total)
    finally:
        model.train(was_training)
    result = {key: torch.cat(values).cpu() for key, values in out.items() if values}
    result["nll"], result["num_tokens"] = result["nll"].float(), result["num_tokens"].long()
    return result
