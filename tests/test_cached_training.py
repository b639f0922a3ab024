"""Training from a logit store through the CLI: same result as the live teacher at k = V, refusals on mismatch."""

import json

import pytest
import torch
import yaml
from conftest import make_char_tokenizer, tiny_llama
from safetensors.torch import load_file

from llm_distill.cli import main
from llm_distill.teacher.store import FingerprintMismatchError


@pytest.fixture
def recipe(tmp_path):
    tokenizer = make_char_tokenizer()
    teacher = tiny_llama(len(tokenizer), layers=3, hidden=48, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox {'jumps ' * (i % 4)}over it." for i in range(40)))
    base = {
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "student": {"from_teacher": {"num_layers": 2}},
        "dataset": {"path": str(text), "max_length": 24, "packing": False, "eval_size": 4},
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 3,
        "logging_steps": 1,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 3,
        "ce_weight": 0.25,
        "learning_rate": 1e-2,
        "kd_loss": "jsd",
        "temperature": 2.0,
        "cache": {"output_dir": str(tmp_path / "store"), "k": len(tokenizer), "shard_size": 8, "dtype": "float32"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def logs(output_dir):
    return json.load(open(output_dir / "trainer_state.json"))["log_history"]


def test_store_at_full_vocab_trains_like_the_live_teacher(recipe, tmp_path):
    assert main(["cache-logits", str(recipe)]) == 0
    assert main(["train", str(recipe), "--output_dir", str(tmp_path / "live")]) == 0
    assert (
        main(
            [
                "train",
                str(recipe),
                "--output_dir",
                str(tmp_path / "cached"),
                "--teacher_logits_path",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    live, cached = logs(tmp_path / "live"), logs(tmp_path / "cached")
    for a, b in zip(live, cached):
        for key in ("loss", "kd_loss", "ce_loss", "eval_kd_loss", "eval_agreement"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-4, abs=1e-6), key
    w_live = load_file(tmp_path / "live" / "model.safetensors")
    w_cached = load_file(tmp_path / "cached" / "model.safetensors")
    for name in w_live:
        torch.testing.assert_close(w_cached[name], w_live[name], atol=1e-5, rtol=1e-4)
    meta = json.load(open(tmp_path / "cached" / "distillation.json"))
    assert meta["teacher_logits_path"] == str(tmp_path / "store")


def test_store_refuses_another_temperature_or_dataset(recipe, tmp_path, capsys):
    assert main(["cache-logits", str(recipe)]) == 0
    store = ["--teacher_logits_path", str(tmp_path / "store"), "--output_dir", str(tmp_path / "x")]
    assert main(["train", str(recipe), *store, "--temperature", "1.0"]) == 2
    assert "written with temperature=2.0 but this run uses temperature=1.0" in capsys.readouterr().err
    assert main(["train", str(recipe), *store, "--dataset.max_length", "20"]) == 2
    assert "dataset" in capsys.readouterr().err
    with pytest.raises(FingerprintMismatchError, match="temperature"):  # --debug: the exception itself
        main(["train", str(recipe), *store, "--temperature", "1.0", "--debug"])
