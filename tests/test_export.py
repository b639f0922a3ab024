"""Exported weights are readable like the rest of a save_pretrained folder (safetensors writes them 0600)."""

import os
import stat

import pytest
import torch
from conftest import tiny_bert_classifier
from datasets import Dataset

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.data import DistillationCollator
from llm_distill.export import default_file_mode, match_umask, process_umask

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one afterwards."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_weights_get_the_mode_of_config_json(tmp_path, umask, mask):
    umask(mask)
    assert process_umask() == mask and default_file_mode() == 0o666 & ~mask
    tiny_bert_classifier().save_pretrained(tmp_path)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    assert _mode(config) == 0o666 & ~mask
    # With safetensors >= 0.8 the weights come out 0600 here; older (or fixed) versions already match.
    changed = match_umask(tmp_path)
    assert _mode(weights) == _mode(config)
    assert changed == ([weights] if changed else [])
    assert match_umask(tmp_path) == []  # idempotent


def test_distillation_trainer_exports_and_checkpoints_readable_weights(tmp_path, umask):
    umask(0o022)
    ids = torch.randint(5, 100, (8, 10))
    ds = Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": [[1] * 10] * 8,
            "labels": [i % 2 for i in range(8)],
            "sample_id": list(range(8)),
        }  # fmt: skip
    )

    class PadOnly:  # a tokenizer stand-in for the collator: only the pad id is needed
        pad_token_id = 0

    args = DistillationConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1, per_device_train_batch_size=4,
        save_strategy="steps", save_steps=1, hidden_weight=1.0, layer_map="uniform",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=tiny_bert_classifier(seed=2),
        teacher_model=tiny_bert_classifier(layers=4, hidden=48, seed=1),  # projections 32 -> 48 are saved too
        args=args,
        train_dataset=ds,
        data_collator=DistillationCollator(PadOnly()),
    )
    trainer.train()
    trainer.save_model(tmp_path / "export")
    checkpoint = tmp_path / "out" / "checkpoint-1"
    for folder in (tmp_path / "export", checkpoint):
        files = sorted(folder.glob("*.safetensors"))
        assert files, folder
        for f in files:  # model.safetensors, and the projections in the checkpoint
            assert _mode(f) == 0o644, (f, oct(_mode(f)))
    assert (checkpoint / "feature_projections.safetensors").exists()
