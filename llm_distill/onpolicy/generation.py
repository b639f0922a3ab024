"""Sampling completions from a causal LM, behind a small interface so that another engine can be added later.

``GenerationBackend`` is what the trainer, ``llm-distill generate`` and ``eval onpolicy`` call: prompts (token ids)
in, completions (token ids, cut after the first EOS, EOS included) out. The one backend shipped is transformers'
``generate`` (KV cache, left padding for batched prompts, stop at EOS).

Randomness is per row: completion i is drawn with its own generator seeded by ``seeds[i]``, through the Gumbel-max
trick (argmax of the warped logits plus Gumbel noise is an exact sample of softmax of the warped logits; Gumbel 1954,
as used for sampling by Maddison et al. 2014). So a row's completion does not depend on which other rows share its
batch, process or accumulation step, and the global RNG (dropout, data order) is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..losses.divergences import check_temperature


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn. ``temperature`` is the *sampling* temperature (0 = greedy), not the loss's."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def check_sampling(
    max_new_tokens, temperature, top_p, top_k, *, prefix: str = "", temperature_field: str = ""
) -> None:
    """The one check of generation settings; field names in errors are ``prefix + name``."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"{prefix}max_new_tokens={max_new_tokens!r} is not accepted; use a number of tokens >= 1")
    name = temperature_field or f"{prefix}generation_temperature"
    if temperature != 0:
        check_temperature(temperature, field=name)
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise ValueError(f"{prefix}top_p={top_p!r} is not accepted; use a probability mass in (0, 1] (1 = off)")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"{prefix}top_k={top_k!r} is not accepted; use 0 (off) or a number of tokens >= 1")


def row_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, step, sample id, ...): distinct tuples give unrelated streams."""
    value = 0x243F6A8885A308D3
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 % (1 << 64)
        value ^= value >> 29
    return value % ((1 << 63) - 1)


def cut_at_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """The completion up to and including its first EOS; nothing after it (a batch pads finished rows)."""
    ids = list(ids)
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``(B, P)``, prompts aligned on the right so generation continues each one."""
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError(
            "a prompt is empty; generation needs at least one prompt token (dataset.task: "
            "prompt_completion or instruction rows with a prompt)"
        )
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


class RowGumbelNoise(LogitsProcessor):
    """Adds Gumbel(0, 1) noise drawn from one generator per row, so that greedy decoding samples."""

    def __init__(self, seeds: Sequence[int], device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniform = torch.stack(
            [
                torch.rand(scores.shape[-1], generator=g, device=scores.device, dtype=torch.float32)
                for g in self.generators
            ]
        )
        # Uniforms at exactly 0 or 1 would give infinite noise; the clamp changes nothing measurable.
        tiny = torch.finfo(torch.float32).tiny
        gumbel = -torch.log(-torch.log(uniform.clamp(min=tiny, max=1 - 1e-7)))
        return scores.float() + gumbel


class MaskVocabTail(LogitsProcessor):
    """Never sample ids past the tokenizer's real vocabulary (padded embedding rows)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.vocab_size :] = -math.inf
        return scores


class GenerationBackend(Protocol):
    """What samples completions for the trainer, ``llm-distill generate`` and ``eval onpolicy``."""

    def generate(
        self, model: nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[int]]:
        """Completions of ``prompts`` by ``model`` (its current weights, eval mode, no grad), each cut after its
        first EOS (EOS included); ``seeds[i]`` draws row i. The model's train/eval mode is restored."""
        ...


class TransformersBackend:
    """transformers' ``generate`` with a KV cache, left-padded prompts, per-row Gumbel sampling, stop at EOS.

    Args:
        eos_ids: ids that end a completion (the tokenizer's EOS and the model's generation_config EOS ids).
        pad_id: id written into left padding (masked out; any id works).
        vocab_size: the tokenizer's real vocabulary; ids at or past it are never sampled. None: the model's width.
        synced_gpus: keep every process decoding until all are done (needed when the weights are sharded across
            processes, FSDP / ZeRO-3: each decoding step gathers the weights collectively).
    """

    def __init__(
        self, eos_ids: Sequence[int], pad_id: int, *, vocab_size: int | None = None, synced_gpus: bool = False
    ):
        if not eos_ids:
            raise ValueError("generation needs an EOS id to stop at; the tokenizer and the model define none")
        self.eos_ids, self.pad_id = [int(i) for i in eos_ids], int(pad_id)
        self.vocab_size, self.synced_gpus = vocab_size, synced_gpus

    def _processors(self, settings: SamplingSettings, seeds: Sequence[int], device, width: int) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if self.vocab_size is not None and self.vocab_size < width:
            processors.append(MaskVocabTail(self.vocab_size))
        if settings.greedy:
            return processors
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
        processors.append(RowGumbelNoise(seeds, device))
        return processors

    def _config(self, settings: SamplingSettings) -> GenerationConfig:
        # Every setting that changes the distribution is given explicitly: transformers fills unset ones from the
        # model's generation_config (a checkpoint's repetition_penalty or suppress_tokens would change the samples).
        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,  # sampling is done by RowGumbelNoise + argmax, per row
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_length=0,
            suppress_tokens=[],
            begin_suppress_tokens=[],
        )

    def generate(
        self, model: nn.Module, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings
    ) -> list[list[int]]:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; one seed per row")
        device = next(model.parameters()).device
        input_ids, attention_mask = left_pad(prompts, self.pad_id, device)
        width = model.get_output_embeddings().weight.shape[0]
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            # fork_rng: nothing here should draw from the global RNG, and if a model's generate does, the training
            # run's dropout and data order stay as they would be without generation.
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=self._config(settings),
                    logits_processor=self._processors(settings, seeds, device, width),
                    synced_gpus=self.synced_gpus,
                )
        finally:
            model.train(was_training)
        new_tokens = out[:, input_ids.shape[1] :].tolist()
        return [cut_at_eos(row, self.eos_ids) for row in new_tokens]


def eos_ids_of(tokenizer, model: nn.Module | None = None) -> list[int]:
    """Ids that end a completion: the tokenizer's EOS and every EOS id the model's generation_config declares."""
    ids = [] if tokenizer is None or tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    config = getattr(model, "generation_config", None)
    declared = getattr(config, "eos_token_id", None)
    for i in [declared] if isinstance(declared, int) else (declared or []):
        if int(i) not in ids:
            ids.append(int(i))
    return ids
