"""Two CPU processes (gloo) write one store together: each rank writes its own shards, rank 0 merges."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from _store_helpers import collate, make_rows, tiny_llama, tiny_tokenizer

from llm_distill.teacher import CachedTeacher
from llm_distill.teacher.store import LogitStore, counted_mask


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, use_accelerate: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    from llm_distill.teacher.store import cache_logits

    accelerator = None
    if use_accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == world
    else:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cache_logits(
        tiny_llama(seed=0),
        make_rows(12),
        collate,
        output_dir=out,
        k=8,
        temperature=2.0,
        batch_size=2,
        shard_size=2,
        teacher_id="tiny-llama",
        tokenizer=tiny_tokenizer(),
        dataset_fingerprint="rows-v1",
        accelerator=accelerator,
    )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "use_accelerate",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # the same path again through Accelerator: slow (spawn)
    ids=["torch_distributed", "accelerate"],
)
def test_two_process_writer_merges_and_serves_every_id(tmp_path, use_accelerate):
    out = tmp_path / "store"
    mp.start_processes(
        _worker, args=(2, _free_port(), str(out), use_accelerate), nprocs=2, join=True, start_method="spawn"
    )
    store = LogitStore(out)
    assert [(s["index"], s["rank"]) for s in store.shards] == [(i, i % 2) for i in range(6)]
    assert {s["file"] for s in store.shards} == {p.name for p in out.glob("shard-*")}
    assert not list(out.glob("manifest.rank*.json"))  # merged and removed
    store.verify()
    rows = make_rows(12)
    batch = collate(rows[::-1])
    got = CachedTeacher(out)(batch).sparse
    mask = counted_mask(batch, "causal_lm")
    with torch.no_grad():
        logits = tiny_llama(seed=0)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    top_lp, top_id = torch.log_softmax(logits / 2.0, dim=-1).topk(8, dim=-1)
    assert torch.equal(got.ids[mask], top_id[mask])
    torch.testing.assert_close(got.logprobs[mask], top_lp[mask], atol=2e-2, rtol=2e-3)
