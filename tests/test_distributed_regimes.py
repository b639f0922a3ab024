"""Two CPU processes equal one for the new teaching regimes: an EMA teacher (every process updates the same EMA),
two teachers (sum, per-teacher logs reduced over processes) and mutual learning (both peers under one DDP wrapper)."""

import pytest
import torch
from test_distributed import run


@pytest.mark.parametrize("mode", ["ema", "teachers", "mutual"])
def test_two_processes_equal_one_process(tmp_path, mode):
    single, single_logs = run(tmp_path / "one", 1, 8, mode)
    double, double_logs = run(tmp_path / "two", 2, 4, mode)
    assert single.keys() == double.keys()
    if mode == "ema":
        assert any(k.startswith("teacher.") for k in single)
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=5e-6, rtol=1e-5, msg=name)
    per_part = [k for k in single_logs[0] if "/" in k]
    assert per_part or mode == "ema"
    for a, b in zip(single_logs, double_logs):
        for key in ("loss", "kd_loss", "ce_loss", *per_part):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
