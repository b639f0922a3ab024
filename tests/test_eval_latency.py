"""Interleaved timing: a model timed against itself comes out at ratio 1; the heavier model is found slower."""

import pytest
import torch
from conftest import tiny_bert_classifier

from llm_distill.evaluation.latency import (
    TimingTarget,
    pinned_threads,
    time_forward,
    time_models,
    timing_warnings,
)


def _batcher(seq_len: int = 24, vocab: int = 128):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (64, seq_len), generator=gen)

    def make(indices):
        rows = ids[list(indices)]
        return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}

    return make


def test_model_against_itself_gives_ratio_one():
    model = tiny_bert_classifier(layers=2, hidden=64).eval()
    make = _batcher()
    targets = [TimingTarget("a", model, make, 6), TimingTarget("b", model, make, 6)]
    for _attempt in range(3):
        out = time_models(targets, batch_size=3, warmup=2, repeats=20, max_repeats=40)
        ratio = out["ratios"]["b"]
        # Same model, same inputs, interleaved: a systematic order or cache effect would show as a ratio != 1.
        # Measured here: 1.00 +- 0.02 on a quiet machine, 0.89-1.11 with 3x more runnable processes than cores.
        if all(0.8 < ratio[k] < 1.25 for k in ("speedup", "throughput_ratio")):
            break
        # A ratio that far off may only come from a disturbed machine, and then the report must say so.
        assert out["warnings"], (ratio, out["timing"])
    else:
        pytest.fail(f"model against itself: {ratio} in three attempts")
    for key in ("speedup", "throughput_ratio"):
        lo, hi = ratio[f"{key}_ci"]
        assert lo <= ratio[key] * 1.0001 and ratio[key] <= hi * 1.0001
    a = out["models"]["a"]
    assert len(a["latency_rounds_ms"]) == out["timing"]["rounds"] >= 20
    # Best of rounds: each input's fastest run, so never slower than the fastest whole round.
    assert a["latency_ms_per_example"] <= min(a["latency_rounds_ms"]) * 1.0001
    lo, hi = a["latency_rounds_iqr_ms"]
    assert lo <= a["latency_typical_ms"] <= hi
    assert out["timing"]["threads"] == 1 and out["timing"]["reference"] == "a"


def test_heavier_model_is_slower_by_its_ratio():
    light = tiny_bert_classifier(layers=1, hidden=64, seed=1).eval()
    heavy = tiny_bert_classifier(layers=6, hidden=64, seed=2).eval()
    make = _batcher()
    targets = [TimingTarget("heavy", heavy, make, 6), TimingTarget("light", light, make, 6)]
    out = time_models(targets, batch_size=3, repeats=10, max_repeats=20)
    ratio = out["ratios"]["light"]
    assert ratio["speedup"] > 1.5 and ratio["speedup_verdict"] == "faster", ratio
    assert ratio["throughput_ratio"] > 1.5 and ratio["throughput_ratio_verdict"] == "faster", ratio


def test_standalone_timing_has_the_same_fields_and_restores_threads():
    before = torch.get_num_threads()
    model = tiny_bert_classifier(layers=1, hidden=32).eval()
    out = time_forward(model, _batcher(), 4, batch_size=2, warmup=1, repeats=3, max_repeats=3)
    assert out["timed_examples"] == 4 and out["latency_ms_per_example"] > 0 and out["throughput_examples_per_s"] > 0
    assert out["timing"]["rounds"] == 3 and torch.get_num_threads() == before
    with pinned_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_warnings_name_what_disturbed_the_timing():
    quiet_model = {"latency_ms_per_example": 2.0, "latency_typical_ms": 2.1}
    timing = {"cpu_share": 0.98, "load_before": 0.5, "load_after": 0.7, "cpu_count": 2, "device": "cpu",
              "stable": True, "rounds": 20, "target_rel_ci": 0.05}  # fmt: skip
    assert timing_warnings({"t": quiet_model}, timing) == []
    busy = {**timing, "cpu_share": 0.55, "load_after": 4.2}
    noisy = {"latency_ms_per_example": 2.0, "latency_typical_ms": 9.0}
    warnings = timing_warnings({"t": quiet_model, "s": noisy}, {**busy, "stable": False})
    text = " ".join(warnings)
    assert len(warnings) == 4
    assert "55%" in text and "4.2 on 2 cores" in text and "s: the median run took 4.5x the best run" in text
    assert "after 20 rounds" in text
