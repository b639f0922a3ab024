"""Sequence lengths and row count of a recipe's data, from a sample of at most a few hundred rows.

The file is opened as training opens it (``data.load_raw``: filters and ``max_samples`` applied, so the row count
is exact), but only the first ``SAMPLE_ROWS`` rows are tokenized.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

from ..data import DataConfig, load_raw
from ..data.encode import ENCODERS

SAMPLE_ROWS = 256
BATCH_DRAWS = 200


@dataclass
class Lengths:
    """``longest``: the longest row (the collator pads every batch to its longest row, so memory is planned for
    it); ``mean_padded``: the expected padded length of a batch of the run's size (what the compute is paid for);
    ``mean``: real tokens per row; ``rows``: training rows (packed text: blocks, estimated from the sample's tokens
    per document), None when unknown; ``source``: how they were found."""

    longest: int
    mean_padded: float
    mean: float
    rows: int | None
    source: str


def from_sample(lengths: list[int], batch_size: int, rows: int | None, source: str, seed: int = 0) -> Lengths:
    """Summarise sampled row lengths; the padded mean is averaged over random batches of ``batch_size`` rows."""
    if not lengths:
        raise ValueError(f"{source}: the length sample is empty")
    rng = random.Random(seed)
    draws = [max(rng.choices(lengths, k=batch_size)) for _ in range(BATCH_DRAWS)]
    return Lengths(max(lengths), sum(draws) / len(draws), sum(lengths) / len(lengths), rows, source)


def fixed(max_length: int, rows: int | None, source: str) -> Lengths:
    return Lengths(max_length, float(max_length), float(max_length), rows, source)


@contextlib.contextmanager
def _quiet():
    """No progress bars for the sample's map/filter calls (they would interleave with the plan's table)."""
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def sample_lengths(dataset: dict, tokenizer_source: str | None, batch_size: int) -> Lengths:
    with _quiet():
        return _sample_lengths(dataset, tokenizer_source, batch_size)


def _sample_lengths(dataset: dict, tokenizer_source: str | None, batch_size: int) -> Lengths:
    """Lengths of the recipe's training rows as ``build_datasets`` makes them, from the first ``SAMPLE_ROWS``.

    When the data or the tokenizer cannot be read (e.g. a hub dataset offline), every row is taken to be
    ``max_length`` long and the source says why.
    """
    cfg = DataConfig.from_dict(dataset)
    try:
        from transformers import AutoTokenizer

        if tokenizer_source is None:
            raise ValueError("no tokenizer source in the recipe")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        train, _ = load_raw(DataConfig.from_dict({**dataset, "eval_size": 0, "eval_path": None, "eval_split": None}))
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return fixed(cfg.max_length, None, f"max_length; data not read: {reason}")
    sample = train.select(range(min(SAMPLE_ROWS, len(train))))
    if cfg.task == "text" and cfg.packing:
        eos = 1 if tokenizer.eos_token_id is not None else 0
        doc_tokens = [
            len(ids) + eos for ids in tokenizer(list(sample[cfg.text_column]), add_special_tokens=False)["input_ids"]
        ]
        blocks = int(len(train) * (sum(doc_tokens) / max(len(doc_tokens), 1)) // cfg.max_length)
        return fixed(cfg.max_length, blocks, f"packed blocks of {cfg.max_length} tokens ({len(train)} documents)")
    rows = ENCODERS[cfg.task](sample, tokenizer, cfg)
    lengths = [len(ids) for ids in rows["input_ids"]]
    return from_sample(lengths, batch_size, len(train), f"{len(lengths)} sampled rows of {cfg.path}")
