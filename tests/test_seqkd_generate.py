"""Sequence-level KD data: `llm-distill generate` writes a teacher's completions once (fingerprinted, resumable, one
shard per process), and training reads them as prompt / completion data."""

import json
from types import SimpleNamespace

import pytest
import yaml
from conftest import make_char_tokenizer, tiny_llama

from llm_distill.cli import main
from llm_distill.data import DataConfig, build_datasets
from llm_distill.onpolicy import SamplingSettings, TransformersBackend, eos_ids_of
from llm_distill.onpolicy.completions import CompletionsMismatchError, generate_completions

QUESTIONS = ["What is 2+2?", "Name a colour:", "Say hi:", "Count to 3:", "x", "Why?", "Spell cat:"]


@pytest.fixture
def prompts(tmp_path, char_tokenizer):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "dataset answer"}) + "\n" for q in QUESTIONS))
    cfg = DataConfig(path=str(path), task="prompt_completion", prompt_column="question", response_column="answer")
    return build_datasets(cfg, char_tokenizer)[0]


def write(folder, teacher, rows, tok, **kw):
    settings = kw.pop("settings", SamplingSettings(max_new_tokens=6, temperature=1.0))
    return generate_completions(
        teacher, rows, tok, output_dir=folder, settings=settings, teacher_id="t", batch_size=2, shard_size=3, **kw
    )


def test_completions_are_the_teachers_cut_at_eos_and_resume_after_an_interruption(tmp_path, char_tokenizer, prompts):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    full = write(tmp_path / "full", teacher, prompts, char_tokenizer, settings=SamplingSettings(6, temperature=0.0))
    rows = [json.loads(line) for line in (full / "completions.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == list(range(len(QUESTIONS)))
    backend = TransformersBackend(eos_ids_of(char_tokenizer, teacher), 0, vocab_size=len(char_tokenizer))
    for row, dataset_row in zip(rows, prompts):
        assert row["prompt_ids"] == dataset_row["input_ids"][: dataset_row["prompt_length"]]
        greedy = backend.generate(teacher, [row["prompt_ids"]], [0], SamplingSettings(6, temperature=0.0))[0]
        assert row["completion_ids"] == greedy and row["completion"] == char_tokenizer.decode(greedy)
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == len(QUESTIONS) and len(manifest["shards"]) == 3

    # Sampled: an interrupted run (second shard fails) resumes to the same bytes as an uninterrupted one.
    reference = write(tmp_path / "ref", teacher, prompts, char_tokenizer)
    calls = {"n": 0}
    original = TransformersBackend.generate

    def fails_in_the_second_shard(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    TransformersBackend.generate = fails_in_the_second_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            write(tmp_path / "resumed", teacher, prompts, char_tokenizer)
    finally:
        TransformersBackend.generate = original
    assert not (tmp_path / "resumed" / "completions.jsonl").exists()
    write(tmp_path / "resumed", teacher, prompts, char_tokenizer)
    assert (tmp_path / "resumed" / "completions.jsonl").read_bytes() == (reference / "completions.jsonl").read_bytes()

    # Another sampling setting or another teacher may not complete or overwrite this folder.
    with pytest.raises(CompletionsMismatchError, match="generation_temperature=1.0 but this run has "):
        write(tmp_path / "ref", teacher, prompts, char_tokenizer, settings=SamplingSettings(6, temperature=0.5))
    other = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=7)
    with pytest.raises(CompletionsMismatchError, match="teacher_weights_hash"):
        write(tmp_path / "ref", other, prompts, char_tokenizer)


def test_each_process_writes_its_own_shards_and_the_result_is_the_one_process_result(
    tmp_path, char_tokenizer, prompts
):
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    single = write(tmp_path / "one", teacher, prompts, char_tokenizer)
    for rank in (1, 0):  # rank 0 merges once every shard is there (the barriers are no-ops here)
        accelerator = SimpleNamespace(process_index=rank, num_processes=2, wait_for_everyone=lambda: None)
        write(tmp_path / "two", teacher, prompts, char_tokenizer, accelerator=accelerator)
    files = sorted(p.name for p in (tmp_path / "two").glob("shard-*"))
    assert files == ["shard-00000-rank0.jsonl", "shard-00001-rank1.jsonl", "shard-00002-rank0.jsonl"]
    assert (tmp_path / "two" / "completions.jsonl").read_bytes() == (single / "completions.jsonl").read_bytes()


def test_generate_then_train_on_the_completions_through_the_cli(tmp_path):
    tokenizer = make_char_tokenizer()
    teacher = tiny_llama(len(tokenizer), layers=3, hidden=48, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "a"}) + "\n" for q in QUESTIONS))
    recipe = {
        "output_dir": str(tmp_path / "student"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "student": {"from_teacher": {"num_layers": 2}},
        "dataset": {"path": str(data), "task": "prompt_completion", "prompt_column": "question",
                    "response_column": "answer", "max_length": 64},
        "generate": {"output_dir": str(tmp_path / "completions"), "batch_size": 4},
        "max_new_tokens": 8,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "kd_weight": 0.0,
        "ce_weight": 1.0,
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["generate", str(path)]) == 0
    completions = tmp_path / "completions" / "completions.jsonl"
    assert len(completions.read_text().splitlines()) == len(QUESTIONS)
    # Sequence-level KD: cross-entropy on the teacher's completions.
    dataset = json.dumps({"path": str(completions), "task": "prompt_completion"})
    assert main(["train", str(path), "--dataset", dataset]) == 0
    assert (tmp_path / "student" / "model.safetensors").exists()
