"""``eval onpolicy``: teacher-scored reverse KL of student samples, teacher NLL of greedy completions, GSM8K match."""

import copy
import json

import pytest
import torch
from conftest import tiny_llama
from test_onpolicy_generation import favour

from llm_distill.evaluation import eval_main
from llm_distill.evaluation.onpolicy import completion_logits, gsm8k_reference, last_number, onpolicy_metrics
from llm_distill.onpolicy import SamplingSettings, completion_batch
from llm_distill.tasks import targets

PROMPTS = ["What is 2+2?", "Name a colour:", "Say hi:", "x"]


def test_gsm8k_answers_and_completions_are_parsed_to_numbers():
    assert gsm8k_reference("She makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18") == "18"
    assert gsm8k_reference("#### 1,234") == "1234" and gsm8k_reference("no marker 5") is None
    assert last_number("So 3 + 4 = 7, the answer is 7.") == "7"
    assert last_number("It costs $1,250.50 in total") == "1250.5" and last_number("-3.0") == "-3"
    assert last_number("no digits") is None


def test_a_student_identical_to_the_teacher_has_zero_reverse_kl(char_tokenizer):
    teacher = tiny_llama(len(char_tokenizer), seed=1)
    result = onpolicy_metrics(
        teacher, copy.deepcopy(teacher), char_tokenizer, PROMPTS, settings=SamplingSettings(max_new_tokens=5)
    )
    assert result["sample_reverse_kl"] == pytest.approx(0.0, abs=1e-6)
    assert result["greedy_teacher_nll"] > 0 and result["exact_match"] is None
    assert 1 <= result["sample_length"]["mean"] <= 5
    assert result["sample_tokens"] == round(result["sample_length"]["mean"] * len(PROMPTS))
    other = onpolicy_metrics(
        teacher, tiny_llama(len(char_tokenizer), seed=2), char_tokenizer, PROMPTS, settings=SamplingSettings(5)
    )
    assert other["sample_reverse_kl"] > 1e-3


def test_exact_match_grades_the_last_number_of_the_greedy_completion(char_tokenizer):
    teacher = tiny_llama(len(char_tokenizer), seed=1)
    student = tiny_llama(len(char_tokenizer), seed=2)
    student.lm_head.register_forward_hook(favour(char_tokenizer.convert_tokens_to_ids("7")))  # always says 7
    # This tokenizer decodes with a space between characters: the completion reads "7 7 7", its last number 7.
    answers = ["... #### 7", "#### 5", "#### 7.0", "#### 777"]
    result = onpolicy_metrics(teacher, student, char_tokenizer, PROMPTS, answers, settings=SamplingSettings(3))
    assert result["exact_match"] == 0.5 and result["exact_match_count"] == 2
    assert result["greedy_length"] == {"mean": 3, "median": 3, "max": 3, "eos_rate": 0.0}


def test_the_verb_runs_from_saved_folders(tmp_path, char_tokenizer):
    for name, seed in (("teacher", 1), ("student", 2)):
        tiny_llama(len(char_tokenizer), seed=seed).save_pretrained(tmp_path / name)
        char_tokenizer.save_pretrained(tmp_path / name)
    prompts = tmp_path / "gsm.jsonl"
    prompts.write_text("".join(json.dumps({"question": q, "answer": "#### 4"}) + "\n" for q in PROMPTS))
    out = tmp_path / "r.json"
    argv = ["onpolicy", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")]
    argv += [
        "--prompts",
        str(prompts),
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
        "--output",
        str(out),
    ]
    assert eval_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_prompts"] == 3 and result["exact_match"] is not None and result["sample_reverse_kl"] > 0


def test_prompt_once_scoring_equals_scoring_every_prompt_and_completion_in_full(char_tokenizer):
    model = tiny_llama(len(char_tokenizer), seed=3).eval()
    prompts = [char_tokenizer(p)["input_ids"] for p in PROMPTS]
    first = [[5, 9, 3], [7], [11, 12, 13, 14, 3], [20, 21]]
    second = [[8], [30, 31, 32], [40, 3], [50, 51, 52, 53, 54, 55]]
    got = completion_logits(model, prompts, [first, second], char_tokenizer.pad_token_id)
    for completions, logits in zip((first, second), got):
        batch = completion_batch(prompts, completions, char_tokenizer.pad_token_id, "cpu")
        mask, labels = targets(batch, "causal_lm")
        with torch.no_grad():
            full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert labels[mask].tolist() == [t for c in completions for t in c]
        torch.testing.assert_close(logits, full[mask], atol=2e-5, rtol=1e-4)
