"""The relation-based feature terms, computed from what ``capture.AttentionCapture`` and the models' hidden states
hold: MiniLMv2 self-attention relations, the attention term on pre-softmax scores, and RKD between samples.

Counts (what each term's sum is divided by, over the accumulation window and all processes):

- ``relation``: real tokens x mapped layer pairs x relation kinds (Q-Q, K-K, V-V): the logged value is the mean KL
  per query token, layer and kind (MiniLMv2 sums the kinds; a weight of 3 gives its scale back).
- ``attention`` on scores: real tokens x mapped layer pairs, as on probabilities.
- ``rkd_distance`` / ``rkd_angle``: ordered pairs ``n (n - 1)`` / triplets ``n (n - 1) (n - 2)`` of the n samples
  (rows with a real token) **of each micro-batch**. RKD relates the samples of one micro-batch to each other: the
  samples of other micro-batches of the window (and of other processes) are not in its relation, so the term is
  exact per micro-batch and its window normalisation divides the sum of all micro-batches' pair (triplet) losses
  by the window's number of pairs (triplets). A different split of the same samples into micro-batches (batch 8 x 1
  vs 4 x 2) relates other pairs; the same micro-batches give the same update however they are spread over
  accumulation steps and processes (tested). Relating every sample of the window would need all of the window's
  pooled student vectors (with their graphs) before the first backward, which a Trainer step does not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..losses.relations import (
    attention_relation_loss,
    attention_score_loss,
    pool_hidden,
    rkd_angle_loss,
    rkd_distance_loss,
)

Captures = Mapping[int, Mapping[str, torch.Tensor | None]]
RKD_TERMS = {"distance": ("rkd_distance", rkd_distance_loss), "angle": ("rkd_angle", rkd_angle_loss)}


def check_relation_heads(heads: int, kinds: Sequence[str], shape, role: str) -> None:
    """Refuse a number of relation heads that does not divide every captured width of a model (``AttentionShape``)."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"relation_heads={heads!r} is not accepted; it must be an int >= 1")
    if shape is None:
        return
    widths = {kind: shape.widths[kind] for kind in kinds}
    bad = {kind: w for kind, w in widths.items() if w % heads}
    if bad:
        divisors = [d for d in range(1, min(widths.values()) + 1) if all(w % d == 0 for w in widths.values())]
        named = ", ".join(f"{kind} width {width}" for kind, width in bad.items())
        raise ValueError(
            f"relation_heads={heads} does not divide the {role}'s {named}"
            f" ({shape.heads} heads, {shape.kv_heads} key/value heads of size {shape.head_dim}); the {role} accepts "
            f"{divisors}, and relation_heads must suit both models"
        )


def captured(records: Captures | None, layer: int, key: str, role: str) -> torch.Tensor:
    """One captured tensor, or an error that says what was missing."""
    if records is None or layer not in records or records[layer].get(key) is None:
        have = {k: sorted(v for v in r if r[v] is not None) for k, r in (records or {}).items()}
        raise ValueError(
            f"no captured {key!r} for {role} layer {layer} (captured: {have or 'nothing'}); the {role} model must run "
            "forward with FeatureDistiller.attach(...) capturing it, once per batch, before the feature terms"
        )
    return records[layer][key]


def _add(total, count, term):
    loss, n = term
    return (loss, n) if total is None else (total + loss, count + n)


def relation_term(
    pairs: Sequence[tuple[int, int]],
    kinds: Sequence[str],
    heads: int,
    attention_mask: torch.Tensor | None,
    student: Captures,
    teacher: Captures,
    *,
    causal: bool,
    require_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLMv2 relations summed over layer pairs and kinds; ``require_grad``: a training student's projections
    must carry a gradient (reentrant gradient checkpointing would hand the hooks graph-less tensors)."""
    total = count = None
    for s_layer, t_layer in pairs:
        for kind in kinds:
            s = captured(student, s_layer, kind, "student")
            if require_grad and not s.requires_grad:
                raise ValueError(
                    f"the student's captured {kind} projection of layer {s_layer} has no gradient; with gradient "
                    "checkpointing use gradient_checkpointing_kwargs={'use_reentrant': False}"
                )
            t = captured(teacher, t_layer, kind, "teacher").to(s.device)
            term = attention_relation_loss(s, t, attention_mask, heads=heads, causal=causal)
            total, count = _add(total, count, term)
    return total, count


def score_attention_term(
    pairs: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor | None,
    student: Captures,
    teacher: Captures,
    *,
    kind: str,
    heads: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention term on pre-softmax scores, over the positions both models' own masks allow."""
    total = count = None
    for s_layer, t_layer in pairs:
        s = captured(student, s_layer, "scores", "student")
        t = captured(teacher, t_layer, "scores", "teacher").to(s.device)
        allowed = [student[s_layer].get("allowed"), teacher[t_layer].get("allowed")]
        allowed = [a.to(s.device) for a in allowed if a is not None]
        both = None if not allowed else (allowed[0] if len(allowed) == 1 else allowed[0] & allowed[1])
        term = attention_score_loss(s, t, attention_mask, allowed=both, kind=kind, heads=heads)
        total, count = _add(total, count, term)
    return total, count


def rkd_terms(
    which: Sequence[str],
    pooling: str,
    attention_mask: torch.Tensor | None,
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """RKD between the samples of this micro-batch, on pooled last-layer hidden states of each model."""
    s, rows = pool_hidden(student_hidden, attention_mask, how=pooling)
    t, _ = pool_hidden(teacher_hidden.to(student_hidden.device), attention_mask, how=pooling)
    return {RKD_TERMS[w][0]: RKD_TERMS[w][1](s, t, rows) for w in which}


def rkd_counts(which: Sequence[str], attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``rkd_terms`` will count for this mask: pairs and triplets of the rows with a real token."""
    n = attention_mask.bool().any(-1).sum()
    per = {"distance": n * (n - 1), "angle": n * (n - 1) * (n - 2)}
    return {RKD_TERMS[w][0]: per[w] for w in which}
