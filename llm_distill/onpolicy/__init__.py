"""On-policy distillation and sequence-level KD: generating completions and training on them.

``generation`` (the ``GenerationBackend`` interface and the transformers ``generate`` backend, per-row seeded
sampling, cut at EOS), ``batch`` (prompts out of a batch, prompt + completion rows back into one), ``steps`` (which
optimizer steps generate, and the metrics they log), ``completions`` (``llm-distill generate``: a teacher's
completions written to a fingerprinted, resumable dataset on disk).
"""

from .batch import SOURCE_KEY, batch_prompts, completion_batch, prompt_lengths
from .generation import (
    GenerationBackend,
    SamplingSettings,
    TransformersBackend,
    check_sampling,
    cut_at_eos,
    eos_ids_of,
    row_seed,
)
from .steps import OnPolicySteps, kd_is_sample_kl, on_policy_step, sample_reverse_kl

__all__ = [
    "SOURCE_KEY",
    "GenerationBackend",
    "OnPolicySteps",
    "SamplingSettings",
    "TransformersBackend",
    "batch_prompts",
    "check_sampling",
    "completion_batch",
    "cut_at_eos",
    "eos_ids_of",
    "kd_is_sample_kl",
    "on_policy_step",
    "prompt_lengths",
    "row_seed",
    "sample_reverse_kl",
]
