"""Latency and throughput of a model's forward pass on a fixed list of inputs.

Every model of a comparison is timed in the same process, on the same examples, with the same warm-up and
repeat counts, so the ratios between them mean something even on a noisy shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def _sync(device: torch.device) -> None:
    # CUDA kernels are asynchronous: without a sync the timer would measure the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(
    model: torch.nn.Module,
    make_batch: Callable[[Sequence[int]], dict[str, torch.Tensor]],
    num_examples: int,
    *,
    batch_size: int = 8,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, float | int]:
    """Time ``model(**make_batch(indices))`` over ``num_examples`` examples.

    ``make_batch(indices)`` returns the (padded) model inputs for those example indices, already on the model's
    device; building them is not timed.

    - ``latency_ms_per_example``: batch size 1, one example after the other; the median over ``repeats`` passes
      of (pass time / num_examples).
    - ``throughput_examples_per_s``: batches of ``batch_size``; num_examples / median pass time.
    ``warmup`` untimed passes of a few forwards each come first (allocator, kernel selection, caches).
    """
    if num_examples < 1:
        raise ValueError("num_examples must be >= 1 to time a model")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    model.eval()
    device = next(model.parameters()).device
    singles = [make_batch([i]) for i in range(num_examples)]
    batches = [
        make_batch(list(range(s, min(s + batch_size, num_examples)))) for s in range(0, num_examples, batch_size)
    ]
    for _ in range(warmup):
        for inputs in singles[:3] + batches[:1]:
            model(**inputs)
    _sync(device)

    def one_pass(inputs_list: list[dict]) -> float:
        start = time.perf_counter()
        for inputs in inputs_list:
            model(**inputs)
        _sync(device)
        return time.perf_counter() - start

    single_times = [one_pass(singles) for _ in range(repeats)]
    batch_times = [one_pass(batches) for _ in range(repeats)]
    return {
        "latency_ms_per_example": 1000.0 * statistics.median(single_times) / num_examples,
        "throughput_examples_per_s": num_examples / statistics.median(batch_times),
        "timed_examples": num_examples,
        "timing_batch_size": batch_size,
        "repeats": repeats,
    }


def text_batcher(tokenizer, texts: Sequence[str | tuple[str, str]], device: torch.device, max_length: int):
    """``make_batch`` for classifiers: tokenise (pairs of) texts, pad to the longest in the batch."""

    def make(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [texts[i] for i in indices]
        if rows and isinstance(rows[0], tuple):
            enc = tokenizer(
                [r[0] for r in rows],
                [r[1] for r in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
        else:
            enc = tokenizer(list(rows), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    return make


def window_batcher(ids: torch.Tensor, length: int, device: torch.device):
    """``make_batch`` for causal LMs: example i is the token window ``ids[i*length:(i+1)*length]`` (all full)."""

    def make(indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = torch.stack([ids[i * length : (i + 1) * length] for i in indices])
        return {"input_ids": rows.to(device), "attention_mask": torch.ones_like(rows).to(device)}

    return make
