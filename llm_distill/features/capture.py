"""What a stock transformers model computes inside its self-attention, captured without touching its modelling code.

Two mechanisms, each the least intrusive one for what it captures:

- **Query/key/value projections** (MiniLMv2 relations): forward hooks on the projection modules of each mapped block
  (BERT ``query/key/value``, Llama and its kin ``q_proj/k_proj/v_proj``; a LoRA-wrapped projection is hooked as
  the wrapper, so its adapter is included). The hook keeps the module's output ``(B, S, heads * head_dim)``: for
  Llama that is *before* rotary position embeddings and before grouped-query heads are repeated. Why before RoPE:
  MiniLMv2 defines its relations on the projections' outputs, RoPE is a fixed rotation that depends on the position
  only and carries nothing learned, and its frequencies depend on the head size, so a student with another head size
  could not reproduce a teacher's post-RoPE dot products even in principle; the pre-RoPE relations compare what each
  model's projections compute from the tokens. The hooks work under any attention implementation (SDPA stays on).
- **Pre-softmax attention scores** (``attention_on: scores``): an attention function registered through
  transformers' ``AttentionInterface`` (and the eager mask function under the same name), selected with
  ``set_attn_implementation``. It receives exactly what the model's own attention receives — queries and keys after
  RoPE, the scaling, the model's additive mask — computes ``QK^T * scaling`` with grouped-query heads repeated, hands
  the scores and the mask's allowed positions to a capture attached to that attention module, and finishes as eager
  attention does (mask, fp32 softmax, dropout, ``@ V``), so the model's outputs do not change. Models whose attention
  needs more than that (logit soft-capping, attention sinks) are refused. The implementation is not saved with the
  model's config: an exported student loads with its default attention.

Layer numbering follows the package: block k (1-based) is the k-th self-attention module in ``named_modules`` order,
which must find exactly ``config.num_hidden_layers`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..losses.relations import RELATION_KINDS

CAPTURE_IMPLEMENTATION = "llm_distill_capture"
PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
# kwargs some models pass to their attention function that change what it computes; the generic function refuses them.
UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")
_SINK = "_llm_distill_score_sink"


@dataclass(frozen=True)
class AttentionShape:
    """Heads of one model's self-attention: query heads, key/value heads (GQA) and the head size."""

    heads: int
    kv_heads: int
    head_dim: int

    @property
    def widths(self) -> dict[str, int]:
        """Width of the concatenated projection outputs per kind (what the relations split into relation heads)."""
        return {
            "query": self.heads * self.head_dim,
            "key": self.kv_heads * self.head_dim,
            "value": self.kv_heads * self.head_dim,
        }

    @classmethod
    def of(cls, config) -> AttentionShape:
        try:
            heads = int(config.num_attention_heads)
        except AttributeError as err:
            raise ValueError(
                f"{type(config).__name__} has no num_attention_heads; cannot capture its attention"
            ) from err
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(heads, kv_heads, head_dim)


def self_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, dict[str, nn.Module]]]:
    """``(name, attention module, {"query"|"key"|"value": projection})`` of every block, block 1 first."""
    found = []
    for name, module in model.named_modules():
        if "cross" in type(module).__name__.lower():
            continue  # encoder-decoder cross-attention relates to another sequence
        children = dict(module.named_children())
        for names in PROJECTION_NAMES:
            if all(child in children for child in names):
                found.append((name, module, {kind: children[c] for kind, c in zip(RELATION_KINDS, names)}))
                break
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not found or (expected is not None and len(found) != expected):
        raise ValueError(
            f"{type(model).__name__}: found {len(found)} self-attention modules with projections named "
            f"{' or '.join('/'.join(n) for n in PROJECTION_NAMES)} but the config has num_hidden_layers={expected}; "
            "relation and score terms support BERT- and Llama-style attention (separate q/k/v projections)"
        )
    return found


def capturing_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention that also hands the pre-softmax scores to the capture attached to ``module`` (if any).

    query ``(B, H, S, d)``, key/value ``(B, H_kv, S_k, d)``, attention_mask additive ``(B, 1, S, S_k)`` or None.
    Returns ``(output (B, S, H, d), probabilities (B, H, S, S_k))`` like transformers' eager functions.
    """
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{type(module).__name__} passes {name}={kwargs[name]!r} to its attention; attention_on='scores' "
                "captures plain scaled dot-product attention only"
            )
    repeats = query.shape[1] // key.shape[1]
    if repeats > 1:  # grouped-query attention: each key/value head serves `repeats` consecutive query heads
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, torch.finfo(scores.dtype).min)
    sink = getattr(module, _SINK, None)
    if sink is not None:
        allowed = None if mask is None else mask > torch.finfo(mask.dtype).min / 2
        sink(scores, allowed)
    weights = scores if mask is None else scores + mask
    probs = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


AttentionInterface.register(CAPTURE_IMPLEMENTATION, capturing_attention)
AttentionMaskInterface.register(CAPTURE_IMPLEMENTATION, eager_mask)


class AttentionCapture:
    """Captures what the relation and score terms need from chosen blocks of one model.

    Args:
        model: a transformers model (peft-wrapped is fine).
        layers: 1-based blocks to capture.
        projections: keep the query/key/value projection outputs (``(B, S, width)`` each).
        scores: keep the pre-softmax scores ``(B, H, S, S)`` and the allowed positions of the model's own mask
            (``(B, 1, S, S)`` bool, or None when the model passes no mask); switches the model's attention to
            ``CAPTURE_IMPLEMENTATION``.
        always: record every forward pass (a frozen teacher, run under ``no_grad``); otherwise only inside
            ``recording()`` (a student: nothing of an unrelated forward pass is kept, with its autograd graph).

    ``take()`` returns ``{layer: {"query", "key", "value", "scores", "allowed"}}`` of the last forward pass and
    forgets it, so stale tensors can never be used twice.
    """

    def __init__(self, model: nn.Module, layers: Iterable[int], *, projections: bool, scores: bool, always: bool):
        modules = self_attention_modules(model)
        self.layers = sorted({int(layer) for layer in layers})
        bad = [layer for layer in self.layers if not 1 <= layer <= len(modules)]
        if bad:
            raise ValueError(f"layers {bad} cannot be captured: {type(model).__name__} has blocks 1..{len(modules)}")
        self.always = always
        self._active = always
        self._records: dict[int, dict[str, torch.Tensor | None]] = {}
        self._handles = []
        self._sinks = []
        for layer in self.layers:
            _, attention, projs = modules[layer - 1]
            if projections:
                for kind, proj in projs.items():
                    self._handles.append(proj.register_forward_hook(self._projection_hook(layer, kind)))
            if scores:
                setattr(attention, _SINK, self._score_sink(layer))
                self._sinks.append(attention)
        if scores:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base.set_attn_implementation(CAPTURE_IMPLEMENTATION)
            if base.config._attn_implementation != CAPTURE_IMPLEMENTATION:
                raise ValueError(
                    f"{type(base).__name__} does not route its attention through transformers' AttentionInterface, "
                    "so its pre-softmax scores cannot be captured; use attention_on='probs'"
                )

    def _projection_hook(self, layer: int, kind: str):
        def hook(module, args, output):
            if self._active:
                self._records.setdefault(layer, {})[kind] = output

        return hook

    def _score_sink(self, layer: int):
        def sink(scores: torch.Tensor, allowed: torch.Tensor | None) -> None:
            if self._active:
                self._records.setdefault(layer, {}).update(scores=scores, allowed=allowed)

        return sink

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record the forward passes run inside the block (forgetting anything recorded before)."""
        self._records.clear()
        self._active = True
        try:
            yield
        finally:
            self._active = self.always

    def take(self) -> dict[int, dict[str, torch.Tensor | None]]:
        records, self._records = self._records, {}
        return records

    def remove(self) -> None:
        """Detach every hook and sink (the attention implementation stays; it computes what eager attention does)."""
        for handle in self._handles:
            handle.remove()
        for attention in self._sinks:
            if hasattr(attention, _SINK):
                delattr(attention, _SINK)
        self._handles, self._sinks = [], []
        self._records.clear()
