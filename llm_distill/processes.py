"""The running job's processes as the writers of stores and completion folders see them."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist


def process_info(accelerator=None) -> tuple[int, int, Callable[[], None]]:
    """``(rank, world_size, barrier)`` from ``accelerator``, else from an initialised torch.distributed group, else a
    single process (a no-op barrier)."""
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist.barrier
    return 0, 1, lambda: None
