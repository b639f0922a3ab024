"""Tiny models, data and collators shared by the logit store tests (no network, built from configs)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 128


def tiny_llama(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    import conftest

    model = conftest.tiny_llama(
        vocab, seed=seed, max_position_embeddings=64, pad_token_id=None, bos_token_id=1, eos_token_id=2
    ).eval()
    # Random init gives near-uniform logits; scale the head so the distributions are peaked like a real LM's.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def tiny_tokenizer(vocab: int = VOCAB, extra_special: str | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    kwargs = {"additional_special_tokens": [extra_special]} if extra_special else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t1", **kwargs)


def make_rows(n: int = 12, seed: int = 0, vocab: int = VOCAB, prompt_mask: bool = True) -> list[dict]:
    """Rows with varying lengths, a masked prompt (labels -100) and non-contiguous sample ids."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(5, 15, (1,), generator=g))
        ids = torch.randint(2, vocab, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, 4, (1,), generator=g)) if prompt_mask else 0
        labels = [-100] * prompt + ids[prompt:]
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels, "sample_id": 1000 + 7 * i})
    return rows


def collate(rows: list[dict], side: str = "right", pad_id: int = 1) -> dict:
    """Pad to the longest row on ``side``; labels padded with -100."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for r in rows:
        pad = width - len(r["input_ids"])
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
            seq = list(r[key])
            out[key].append(seq + [fill] * pad if side == "right" else [fill] * pad + seq)
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
    batch["sample_id"] = torch.tensor([r["sample_id"] for r in rows], dtype=torch.long)
    return batch


def left_collate(rows: list[dict]) -> dict:
    return collate(rows, side="left")


class CrashAfter:
    """A collator that raises after ``n`` calls: a writer killed in the middle of a shard."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, rows):
        self.calls += 1
        if self.calls > self.n:
            raise RuntimeError("simulated crash")
        return collate(rows)


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, rows):
        self.calls += 1
        return collate(rows)
