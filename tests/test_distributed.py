"""Two CPU processes (gloo) give the same student and the same logged losses as one process, same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def run(output_dir, nproc, per_device_batch, mode, accumulation=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        cmd = [sys.executable, WORKER]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(29500 + os.getpid() % 1000),
            WORKER,
        ]
    result = subprocess.run(
        cmd + [str(output_dir), str(per_device_batch), mode, str(accumulation)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = torch.load(os.path.join(output_dir, "final.pt"))
    logs = json.load(open(os.path.join(output_dir, "log.json")))
    return state, logs


def write_store(path):
    """A full-vocabulary store of the worker's teacher over the worker's rows (k = V: equal to the live teacher)."""
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import make_char_tokenizer, tiny_llama
    from test_trainer import instruction_dataset

    from llm_distill.data import DistillationCollator
    from llm_distill.teacher.store import cache_logits

    tokenizer = make_char_tokenizer()
    cache_logits(
        tiny_llama(len(tokenizer), layers=4, hidden=48, seed=1),
        instruction_dataset(tokenizer, n=16),
        DistillationCollator(tokenizer),
        output_dir=path,
        k=len(tokenizer),
        temperature=1.0,
        shard_size=5,
        teacher_id="tiny",
        tokenizer=tokenizer,
        dtype="float32",
    )
    return f"cached:{path}"


@pytest.mark.parametrize("mode", ["logits", "features", "cached", "onpolicy", "cross_tokenizer"])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, mode):
    if mode == "cached":
        mode = write_store(tmp_path / "store")
    single, single_logs = run(tmp_path / "one", 1, 8, mode)
    double, double_logs = run(tmp_path / "two", 2, 4, mode)
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=5e-6, rtol=1e-5, msg=name)
    keys = (
        "loss",
        "kd_loss",
        "ce_loss",
        "agreement",
        "hidden_loss",
        "attention_loss",
        "completion_length",
        "sample_reverse_kl",
    )
    for a, b in zip(single_logs, double_logs):
        if mode == "onpolicy" and "loss" in a:
            assert a["onpolicy_fraction"] == b["onpolicy_fraction"] == 1.0
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_relation_score_rkd_and_selection_terms_are_the_same_on_two_processes(tmp_path):
    """RKD relates the samples of a micro-batch: one process with batch 4 x accumulation 2 sees the same micro-batches
    as two processes with batch 4 each (the other terms would also match 8 x 1)."""
    single, single_logs = run(tmp_path / "one", 1, 4, "relational", accumulation=2)
    double, double_logs = run(tmp_path / "two", 2, 4, "relational")
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=5e-6, rtol=1e-5, msg=name)
    keys = (
        "loss",
        "kd_loss",
        "attention_loss",
        "relation_loss",
        "rkd_distance_loss",
        "rkd_angle_loss",
        "selection_kept_fraction",
        "selection_score_mean",
    )
    assert all(k in single_logs[0] for k in keys)
    for a, b in zip(single_logs, double_logs):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), key
