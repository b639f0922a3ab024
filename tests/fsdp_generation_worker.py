"""Run by tests/test_onpolicy_generation.py under torchrun with two CPU processes (gloo).

The student is sharded with FSDP2 (``fully_shard``, per block and root) and samples with ``synced_gpus``: process 1's
row stops at EOS after one token while process 0 decodes on, so process 1 must keep joining the weight all-gathers.
Each process writes its completion and the same row sampled by the unsharded model.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_char_tokenizer, tiny_llama  # noqa: E402
from test_onpolicy_generation import favour  # noqa: E402

from llm_distill.onpolicy import SamplingSettings, TransformersBackend, eos_ids_of  # noqa: E402


def main(output_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok = make_char_tokenizer()
    unsharded = tiny_llama(len(tok), seed=2).eval()
    sharded = tiny_llama(len(tok), seed=2)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    register_fsdp_forward_method(sharded, "generate")
    if rank == 1:  # this process's row ends at once
        for model in (sharded, unsharded):
            model.lm_head.register_forward_hook(favour(tok.eos_token_id))
    prompt = [tok(["Count to three please:", "Q:"][rank])["input_ids"]]
    settings = SamplingSettings(max_new_tokens=10)
    eos = eos_ids_of(tok, unsharded)
    got = TransformersBackend(eos, tok.pad_token_id, synced_gpus=True).generate(sharded, prompt, [rank], settings)
    want = TransformersBackend(eos, tok.pad_token_id).generate(unsharded, prompt, [rank], settings)
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"sharded": got, "unsharded": want}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
