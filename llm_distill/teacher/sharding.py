"""Where the frozen teacher lives under each accelerate strategy.

- single device / DDP (and DeepSpeed ZeRO-1/2): a full replica on every process. A frozen model has no
  gradients to synchronise and no optimizer state to shard, so no wrapper is needed.
  Memory per process: teacher parameters x bytes per parameter (e.g. 8B x 2 B = 16 GB in bf16).
- FSDP2: the teacher is sharded with ``torch.distributed.fsdp.fully_shard`` per transformer block; each block's
  parameters are all-gathered for its forward and freed after it. Memory per process: params / world_size, plus
  one gathered block at a time.
- DeepSpeed ZeRO-3: the teacher goes through ``deepspeed.initialize`` with a stage-3 config and no optimizer, so
  its parameters are partitioned like the student's and gathered layer by layer in forward.
  Memory per process: params / world_size, plus the prefetch buckets.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _block_classes(model: nn.Module) -> tuple[type, ...]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def shard_teacher_fsdp2(model: nn.Module, accelerator) -> nn.Module:
    """Shard a frozen teacher with FSDP2 (``fully_shard``), one unit per transformer block plus the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    param_dtype = next(model.parameters()).dtype
    if accelerator.mixed_precision == "bf16":
        param_dtype = torch.bfloat16
    elif accelerator.mixed_precision == "fp16":
        param_dtype = torch.float16
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    model.to(accelerator.device)
    blocks = _block_classes(model)
    if not blocks:
        logger.warning("teacher %s names no _no_split_modules; sharding it as one FSDP unit", type(model).__name__)
    for module in model.modules():
        if blocks and isinstance(module, blocks):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _zero3_inference_config(train_config: dict, model: nn.Module) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": train_config.get("train_micro_batch_size_per_gpu", 1),
        "zero_optimization": copy.deepcopy(train_config.get("zero_optimization", {})),
        "bf16": train_config.get("bf16", {"enabled": False}),
        "fp16": train_config.get("fp16", {"enabled": False}),
    }
    config["zero_optimization"]["stage"] = 3
    # No optimizer will ever step this model: drop offload of optimizer state and size the buckets to the model.
    config["zero_optimization"].pop("offload_optimizer", None)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden:
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden * hidden,
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                "stage3_param_persistence_threshold": 10 * hidden,
            }
        )
    return config


def shards_teacher(accelerator) -> bool:
    """True under the strategies that shard the teacher's weights (FSDP, DeepSpeed) rather than replicate them."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def prepare_teacher(model: nn.Module, accelerator) -> nn.Module:
    """Place (and, for FSDP2 / ZeRO-3, shard) a frozen teacher for the accelerator's strategy."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        train_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if train_config.get("zero_optimization", {}).get("stage", 0) != 3:
            return model.to(accelerator.device)  # ZeRO-1/2 shard what a frozen model does not have
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, config=_zero3_inference_config(train_config, model))
        engine.module.eval()
        return engine.module
    if kind == DistributedType.FSDP:
        if getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
            raise ValueError(
                "the teacher is sharded with FSDP2 only; set fsdp_version: 2 in the accelerate config "
                "(see launch/fsdp2.yaml)"
            )
        return shard_teacher_fsdp2(model, accelerator)
    return model.to(accelerator.device)
