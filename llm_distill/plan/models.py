"""Parameter counts and module structure of a model, from its config alone: built on the meta device, no weights."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..student import apply_lora, shrink_config

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BLOCK_LIST_NAMES = ("layer", "layers", "h", "block")


def dtype_of(name: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` / None -> a float dtype (``auto`` and unknown names give ``default``)."""
    if isinstance(name, torch.dtype):
        return name
    return DTYPE_NAMES.get(str(name).replace("torch.", ""), default) if name else default


def checkpoint_dtype(config) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (what ``dtype="auto"`` loads)."""
    return dtype_of(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None))


def block_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList holding the transformer blocks (``model.layers``, ``bert.encoder.layer``, ...)."""
    n = int(model.config.num_hidden_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.split(".")[-1] in BLOCK_LIST_NAMES:
            return module
    raise ValueError(f"{type(model).__name__} has no ModuleList of {n} blocks named {'/'.join(BLOCK_LIST_NAMES)}")


@dataclass
class ModelShape:
    """What the plan needs to know about one model. Counts are numbers of parameters (tied weights once)."""

    model_class: type
    config: object
    dtype: torch.dtype  # of the weights as trained / loaded
    params: int
    trainable: int  # LoRA: the adapters (and modules_to_save); otherwise every parameter
    adapter_params: int  # LoRA adapters (0 without LoRA)
    linear_params: int  # weights applied by nn.Linear layers (lm_head included): what autocast copies to 16 bits
    matmul_params: int  # weights used in a matmul per token, lm_head / classifier excluded (for FLOPs)
    head_params: int  # lm_head weight (tied or not): V x H; 0 for classifiers
    block_params: int  # one transformer block
    num_layers: int
    hidden: int
    vocab: int | None
    num_labels: int | None


def meta_model(config, model_class: type) -> nn.Module:
    """The model built on the meta device: every module and parameter shape, no memory, no weights read."""
    with torch.device("meta"):
        return model_class(config)


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def describe(model: nn.Module, dtype: torch.dtype, lora: dict | None = None) -> ModelShape:
    """Counts of a (meta) model; with ``lora`` (``r``, ``alpha``, ``target_modules``, ...) it is wrapped first."""
    config = model.config
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    linear = _unique(m.weight for m in model.modules() if isinstance(m, nn.Linear))
    linear_params = sum(p.numel() for p in linear)  # a tied lm_head is cast too: it is applied as a Linear
    head_params = head_weight.numel() if head_weight is not None and head is not None else 0
    head_ids = {id(head_weight)} if head_weight is not None else set()
    matmul_params = sum(p.numel() for p in linear if id(p) not in embeddings | head_ids)
    block = block_list(model)[0]
    block_params = sum(p.numel() for p in block.parameters())
    adapter_params = 0
    if lora:
        model = wrap_lora(model, lora)
        adapter_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    params = _unique(model.parameters())
    return ModelShape(
        model_class=type(model.get_base_model() if hasattr(model, "get_base_model") else model),
        config=config,
        dtype=dtype,
        params=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        adapter_params=adapter_params,
        linear_params=linear_params,
        matmul_params=matmul_params,
        head_params=head_params if getattr(config, "vocab_size", None) else 0,
        block_params=block_params,
        num_layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        vocab=getattr(config, "vocab_size", None),
        num_labels=getattr(config, "num_labels", None),
    )


def wrap_lora(model: nn.Module, lora: dict) -> nn.Module:
    """The model wrapped in peft LoRA as ``student.apply_lora`` wraps it (same defaults), e.g. on the meta device."""
    return apply_lora(model, **{k: v for k, v in lora.items() if k != "merge"})


def shallow_config(config, layers: int):
    """``config`` with only ``layers`` blocks (widths, per-layer entries and attention implementation kept)."""
    small = shrink_config(config, num_layers=min(layers, int(config.num_hidden_layers)))
    small._attn_implementation = config._attn_implementation
    return small


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build a model with weights in ``dtype`` (fake parameters cannot be cast with ``.to`` afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
