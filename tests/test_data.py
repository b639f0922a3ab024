"""Data recipes: packing, prompt masking, classification rows, padding and sample ids."""

import json

import pytest
import torch

from llm_distill.data import DataConfig, DistillationCollator, build_datasets
from llm_distill.tasks import targets


def test_text_packing_fills_blocks_with_documents_joined_by_eos(tmp_path, char_tokenizer):
    path = tmp_path / "t.txt"
    path.write_text("abcdef\n\nghij\nklmnopqrstu\n")
    train, _ = build_datasets(DataConfig(path=str(path), max_length=8), char_tokenizer)
    eos = char_tokenizer.eos_token_id
    stream = char_tokenizer("abcdef")["input_ids"] + [eos] + char_tokenizer("ghij")["input_ids"] + [eos]
    assert train[0]["input_ids"] == stream[:8]
    assert all(len(r["input_ids"]) == 8 for r in train)
    assert train["sample_id"] == list(range(len(train)))
    assert train[0]["labels"] == train[0]["input_ids"]


def test_instruction_prompt_tokens_are_masked(tmp_path, char_tokenizer):
    path = tmp_path / "i.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "response": " ok"}) + "\n")
    train, _ = build_datasets(DataConfig(path=str(path), task="instruction"), char_tokenizer)
    row = train[0]
    n_prompt = len(char_tokenizer("Q?")["input_ids"])
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert row["input_ids"][-1] == char_tokenizer.eos_token_id


def test_classification_rows_and_eval_split(tmp_path, char_tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s{i}", "label": i % 2}) + "\n" for i in range(10)))
    cfg = DataConfig(path=str(path), task="classification", text_column="sentence", eval_size=3)
    train, evaluation = build_datasets(cfg, char_tokenizer)
    assert len(train) == 7 and len(evaluation) == 3
    assert set(train.column_names) == {"input_ids", "attention_mask", "labels", "sample_id"}


def test_missing_column_is_named(tmp_path, char_tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 0}) + "\n")
    with pytest.raises(
        ValueError, match=r"dataset.text_column='sentence' is not a column.*columns are \['text', 'label'\]"
    ):
        build_datasets(DataConfig(path=str(path), task="classification", text_column="sentence"), char_tokenizer)


def test_bad_data_config_values_are_named():
    with pytest.raises(ValueError, match="dataset.task='chat'"):
        DataConfig(path="x", task="chat")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datasets(DataConfig(path="/no/such/file.txt"), None)


def test_collator_pads_labels_with_minus_100_and_causal_mask_shifts():
    class Tok:
        pad_token_id = 0

    rows = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "sample_id": 3},
        {"input_ids": [8], "attention_mask": [1], "labels": [8], "sample_id": 9},
    ]
    batch = DistillationCollator(Tok())(rows)
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["sample_id"].tolist() == [3, 9]
    mask, labels = targets(batch, "causal_lm")
    # logits at t predict token t+1: row 0 counts t=0 (->6) and t=1 (->7); row 1 has nothing to predict.
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    assert labels[0, :2].tolist() == [6, 7]
    mlm_mask, _ = targets(batch, "masked_lm")
    assert mlm_mask.tolist() == [[False, True, True], [True, False, False]]
    cls = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.tensor([1, -100])}
    assert targets(cls, "sequence_classification")[0].tolist() == [True, False]
