"""Prompt / completion rows: rendered as generation sees them, and only completion tokens (EOS included) count."""

import json

import pytest

from llm_distill.data import DataConfig, DistillationCollator, build_datasets
from llm_distill.tasks import targets

# A minimal chat template in the shape of SmolLM2's (role header, content, end-of-turn token = EOS).
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}[EOS]{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_plain_prompt_and_completion_rows_count_the_completion_and_its_eos(tmp_path, char_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "2+2?", "answer": " 4"}])
    cfg = DataConfig(path=path, task="prompt_completion", prompt_column="question", response_column="answer")
    train, _ = build_datasets(cfg, char_tokenizer)
    row = train[0]
    prompt, completion = char_tokenizer("2+2?")["input_ids"], char_tokenizer(" 4")["input_ids"]
    eos = char_tokenizer.eos_token_id
    assert row["input_ids"] == prompt + completion + [eos]
    assert row["prompt_length"] == len(prompt)
    assert row["labels"] == [-100] * len(prompt) + completion + [eos]

    batch = DistillationCollator(char_tokenizer)([row, {**row, "input_ids": row["input_ids"][:-1]}])
    assert batch["prompt_length"].tolist() == [len(prompt)] * 2
    mask, labels = targets(batch, "causal_lm")
    # Logits at t predict t+1: the last prompt position predicts the first completion token, ..., one predicts EOS.
    counted = mask[0].nonzero().flatten().tolist()
    assert counted == list(range(len(prompt) - 1, len(prompt) + len(completion)))
    assert labels[0, counted].tolist() == completion + [eos]


def test_chat_template_renders_the_generation_prompt_and_messages(tmp_path, char_tokenizer):
    char_tokenizer.chat_template = CHAT
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "hi", "response": "yo"}])
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    chat_path = write_jsonl(tmp_path / "m.jsonl", [{"messages": messages}])
    prompt_ids = char_tokenizer("<user>hi")["input_ids"] + [char_tokenizer.eos_token_id]
    prompt_ids += char_tokenizer("<assistant>")["input_ids"]
    completion = char_tokenizer("yo")["input_ids"] + [char_tokenizer.eos_token_id]
    train, _ = build_datasets(DataConfig(path=path, task="prompt_completion"), char_tokenizer)
    assert train[0]["input_ids"] == prompt_ids + completion and train[0]["prompt_length"] == len(prompt_ids)
    chat, _ = build_datasets(
        DataConfig(path=chat_path, task="prompt_completion", messages_column="messages"), char_tokenizer
    )
    assert chat[0]["input_ids"] == train[0]["input_ids"] and chat[0]["labels"] == train[0]["labels"]
    plain, _ = build_datasets(DataConfig(path=path, task="prompt_completion", chat_template=False), char_tokenizer)
    assert plain[0]["prompt_length"] == len(char_tokenizer("hi")["input_ids"])


def test_prompts_only_and_pretokenized_rows(tmp_path, char_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}])
    train, _ = build_datasets(DataConfig(path=path, task="prompt_completion", response_column=None), char_tokenizer)
    assert train[0]["labels"] == [-100] * 3 and train[0]["prompt_length"] == 3
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt_ids": [9, 8, 7], "completion_ids": [10, 11, 3], "x": 1}])
    train, _ = build_datasets(DataConfig(path=path, task="prompt_completion", max_length=5), char_tokenizer)
    # Ids are used as they are (never re-tokenized); the completion is cut to max_length.
    assert train[0]["input_ids"] == [9, 8, 7, 10, 11] and train[0]["labels"] == [-100] * 3 + [10, 11]


def test_refusals_name_the_setting(tmp_path, char_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a long prompt", "response": "x"}])
    with pytest.raises(ValueError, match="dataset.max_length=4"):
        build_datasets(DataConfig(path=path, task="prompt_completion", max_length=4), char_tokenizer)
    with pytest.raises(ValueError, match="chat_template=true"):
        build_datasets(DataConfig(path=path, task="prompt_completion", chat_template=True), char_tokenizer)
    with pytest.raises(ValueError, match="dataset.chat_template='yes'"):
        DataConfig(path=path, task="prompt_completion", chat_template="yes")
    with pytest.raises(ValueError, match="dataset.response_column='answer' is not a column"):
        build_datasets(DataConfig(path=path, task="prompt_completion", response_column="answer"), char_tokenizer)
