"""On-policy steps for the trainer: which optimizer steps generate their completions, and the generation itself.

GKD (Agarwal et al., ICLR 2024): with probability ``lmbda`` an optimizer step trains on completions the student
samples from its current weights; otherwise on the dataset's completions, or (``seq_kd``) on completions the teacher
samples. The choice is a function of (seed, global step) only, so every process makes the same one and a resumed run
makes the same ones again. Generation happens when the Trainer fetches the accumulation window (``get_batch_samples``),
before the window's counted tokens are summed, so the generated completions are normalised like every other term.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import torch
from torch import nn

from ..losses.divergences import divergence
from ..losses.fused.kernels import resolve_kind
from ..losses.terms import fused_logit_terms
from .batch import SOURCE_KEY, batch_prompts, completion_batch
from .generation import GenerationBackend, SamplingSettings, TransformersBackend, eos_ids_of, row_seed

logger = logging.getLogger(__name__)

STUDENT, TEACHER = "student", "teacher"
# Salts that keep the streams of the step choice and of each source apart.
_CHOICE, _SOURCES = 0x5EED, {STUDENT: 1, TEACHER: 2}
# Logged sums, reduced over processes in ``logs``.
_SUMS = ("steps", "student_steps", "teacher_steps", "rows", "completion_tokens", "gen_seconds", "wall_seconds",
         "kl", "kl_tokens")  # fmt: skip


def on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether optimizer step ``step`` (0-based) trains on the student's own samples: True for a fraction ``lmbda``
    of steps, decided from (seed, step) alone."""
    if lmbda <= 0:
        return False
    if lmbda >= 1:
        return True
    return random.Random(row_seed(seed, step, _CHOICE)).random() < lmbda


class OnPolicySteps:
    """Replaces the completions of a window's micro-batches with generated ones on the steps that call for it.

    Args:
        lmbda: fraction of optimizer steps whose completions the student generates.
        seq_kd: on the other steps, the teacher generates the completions (instead of the dataset's).
        settings: sampling settings (temperature here is the sampling temperature, not the loss's).
        seed: the run's seed; with the step and each row's sample id it seeds that row's sample.
        backend: the generation engine.
        pad_id: id used to pad rebuilt batches (masked out everywhere).
        rank: this process (only for rows without a sample id, whose seeds then depend on the batching).
    """

    def __init__(
        self,
        *,
        lmbda: float,
        seq_kd: bool,
        settings: SamplingSettings,
        seed: int,
        backend: GenerationBackend,
        pad_id: int,
        rank: int = 0,
    ):
        self.lmbda, self.seq_kd, self.settings, self.seed = lmbda, seq_kd, settings, seed
        self.backend, self.pad_id, self.rank = backend, pad_id, rank
        self._sums = dict.fromkeys(_SUMS, 0.0)
        self._since: float | None = None

    @classmethod
    def from_config(
        cls, args, tokenizer, model: nn.Module, *, vocab_size: int | None, synced_gpus: bool, rank: int
    ) -> OnPolicySteps:
        """From a ``DistillationConfig``'s on-policy fields, with the transformers backend."""
        eos = eos_ids_of(tokenizer, model)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (eos[0] if eos else 0)
        return cls(
            lmbda=args.lmbda,
            seq_kd=args.seq_kd,
            settings=SamplingSettings(args.max_new_tokens, args.generation_temperature, args.top_p, args.top_k),
            seed=args.seed,
            backend=TransformersBackend(eos, pad, vocab_size=vocab_size, synced_gpus=synced_gpus),
            pad_id=pad,
            rank=rank,
        )

    def describe(self) -> dict:
        """What the exported student's metadata records about how its completions were made."""
        s = self.settings
        return {
            "lmbda": self.lmbda,
            "seq_kd": self.seq_kd,
            "max_new_tokens": s.max_new_tokens,
            "generation_temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
        }

    def source(self, step: int) -> str | None:
        """Who writes the completions of optimizer step ``step``: the student, the teacher, or None (the dataset)."""
        if on_policy_step(self.seed, step, self.lmbda):
            return STUDENT
        return TEACHER if self.seq_kd else None

    def _seeds(self, batch: dict, step: int, micro: int, source: str) -> list[int]:
        salt = _SOURCES[source]
        if batch.get("sample_id") is not None:
            return [row_seed(self.seed, step, salt, int(s)) for s in batch["sample_id"].tolist()]
        n = batch["input_ids"].shape[0]
        return [row_seed(self.seed, step, salt, self.rank, micro, i, 1 << 40) for i in range(n)]

    def prepare_window(self, batches: list[dict], *, step: int, student: nn.Module, teacher: nn.Module | None):
        """The window's micro-batches for optimizer step ``step``: unchanged, or with generated completions."""
        now = time.perf_counter()
        self._since = now if self._since is None else self._since
        self._sums["steps"] += 1
        source = self.source(step)
        if source is None:
            labelled = [b["labels"] for b in batches if b.get("labels") is not None]
            if (
                batches
                and len(labelled) == len(batches)
                and not any(bool((labels != -100).any()) for labels in labelled)
            ):
                logger.warning(
                    "off-policy step %d has no completion tokens to learn from (prompt-only rows?): it trains on "
                    "nothing; use lmbda=1 or seq_kd=true with prompt-only data",
                    step,
                )
            return batches
        model = student if source == STUDENT else teacher
        if model is None:
            raise ValueError("seq_kd=True needs a live teacher model to generate completions; this teacher has none")
        out = []
        for micro, batch in enumerate(batches):
            prompts = batch_prompts(batch)
            completions = self.backend.generate(model, prompts, self._seeds(batch, step, micro, source), self.settings)
            device = batch["input_ids"].device
            rebuilt = completion_batch(prompts, completions, self.pad_id, device, batch.get("sample_id"))
            rebuilt[SOURCE_KEY] = source
            out.append(rebuilt)
            self._sums["rows"] += len(completions)
            self._sums["completion_tokens"] += sum(len(c) for c in completions)
        self._sums[f"{source}_steps"] += 1
        self._sums["gen_seconds"] += time.perf_counter() - now
        return out

    def record_sample_kl(self, inputs: dict, kl_sum: Callable[[], torch.Tensor], tokens: torch.Tensor) -> None:
        """Adds the per-token reverse KL of a student-generated micro-batch (``kl_sum`` is only called for those)."""
        if inputs.get(SOURCE_KEY) != STUDENT:
            return
        self._sums["kl"] += float(kl_sum())
        self._sums["kl_tokens"] += float(tokens)

    def logs(self, reduce: Callable[[torch.Tensor], torch.Tensor], device) -> dict[str, float]:
        """The metrics since the last call, summed over processes by ``reduce``; empty when no step ran."""
        if self._since is not None:
            self._sums["wall_seconds"] = time.perf_counter() - self._since
        sums = torch.tensor([self._sums[k] for k in _SUMS], dtype=torch.float64, device=device)
        totals = dict(zip(_SUMS, reduce(sums).tolist()))
        self._sums = dict.fromkeys(_SUMS, 0.0)
        self._since = time.perf_counter()
        if not totals["steps"]:
            return {}
        # Each process counted every step; the fractions are per step, not per process-step.
        logs = {"onpolicy_fraction": totals["student_steps"] / totals["steps"]}
        if self.seq_kd:
            logs["seq_kd_fraction"] = totals["teacher_steps"] / totals["steps"]
        if totals["rows"]:
            logs["completion_length"] = totals["completion_tokens"] / totals["rows"]
        if totals["wall_seconds"] > 0:
            logs["generation_time_share"] = totals["gen_seconds"] / totals["wall_seconds"]
        if totals["kl_tokens"]:
            logs["sample_reverse_kl"] = totals["kl"] / totals["kl_tokens"]
        return logs


def kd_is_sample_kl(kind: str, beta: float, temperature: float) -> bool:
    """Whether the KD sum already is the logged sample KL (reverse KL at T = 1, where T^2 = 1): no second pass."""
    return resolve_kind(kind, beta) == "reverse_kl" and temperature == 1.0


def sample_reverse_kl(
    mask: torch.Tensor,
    teacher_out,
    *,
    logits: torch.Tensor | None = None,
    hidden: torch.Tensor | None = None,
    head: nn.Module | None = None,
    vocab_size: int | None = None,
    chunk_size: int = 0,
) -> torch.Tensor:
    """Sum over counted positions of KL(p_S || p_T) at temperature 1 (no T^2): how far the teacher is from the
    student on the states the student visits. From the student's ``logits`` ``(B, S, V)``, or (fused path) its final
    ``hidden`` states ``(B, S, H)`` and lm_head; the teacher's dense logits or final hidden states + lm_head."""
    kd = dict(kind="reverse_kl", temperature=1.0, beta=0.5, scale_by_t2=False)
    with torch.no_grad():
        if logits is not None:
            v = vocab_size or logits.shape[-1]
            return divergence(logits[..., :v], teacher_out.logits[..., :v], mask=mask, reduction="sum", **kd)
        kl, _, _ = fused_logit_terms(
            hidden.detach(),
            head.weight.detach(),
            None if head.bias is None else head.bias.detach(),
            teacher_logits=teacher_out.logits,
            teacher_hidden=teacher_out.final_hidden,
            teacher_weight=teacher_out.lm_head_weight,
            teacher_bias=teacher_out.lm_head_bias,
            mask=mask,
            labels=None,
            kd=kd,
            weights=(1.0, 0.0),
            vocab_size=vocab_size,
            chunk_size=chunk_size,
        )
        return kl
