"""`eval distill` for a student with another tokenizer, and GPT-2's two tokenizer files read as a tokenizer."""

import copy

import pytest
import torch
from _tokenizer_helpers import GPT2_DIR, gpt2_tokenizer, wikitext_lines
from conftest import make_char_tokenizer, make_swapped_char_tokenizer, tiny_llama
from test_cross_tokenizer_trainer import student_tokenizer

from llm_distill.evaluation import agreement
from llm_distill.evaluation.cross_agreement import text_pieces
from llm_distill.tasks import load_tokenizer_of

TEXT = "Say hi: one two three. Name a colour, any colour: blue. Tell me a fact: water is wet.\n" * 6


def save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_the_same_model_behind_a_permuted_vocabulary_agrees_everywhere(tmp_path):
    """A student that computes the teacher's function through swapped ids: every position aligns, the exact map
    carries all of the teacher's mass, and top-1 agreement is exactly 1."""
    teacher_tok, student_tok = make_char_tokenizer(), make_swapped_char_tokenizer("a", "e")
    teacher = tiny_llama(len(teacher_tok), layers=2, hidden=32, seed=4)
    student = copy.deepcopy(teacher)
    a, e = teacher_tok.convert_tokens_to_ids(["a", "e"])
    with torch.no_grad():
        for weight in (student.get_input_embeddings().weight, student.get_output_embeddings().weight):
            weight[[a, e]] = weight[[e, a]].clone()
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    result = agreement.run(
        save(teacher, teacher_tok, tmp_path / "t"), [save(student, student_tok, tmp_path / "s")], text=str(text),
        max_length=64,
    )  # fmt: skip
    m = result["students"][str(tmp_path / "s")]
    assert m["cross_tokenizer"] and m["top1_agreement"] == 1.0 and m["aligned_share"] == 1.0
    assert m["teacher_mass_on_exact_map"] == pytest.approx(1.0, abs=1e-5)


def test_a_student_with_another_tokenizer_is_scored_beside_one_with_the_teachers(tmp_path):
    teacher_tok, other = make_char_tokenizer(), student_tokenizer()
    teacher = tiny_llama(len(teacher_tok), layers=2, hidden=32, seed=4)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    same = save(tiny_llama(len(teacher_tok), seed=5), teacher_tok, tmp_path / "same")
    cross = save(tiny_llama(len(other), seed=6), other, tmp_path / "cross")
    result = agreement.run(save(teacher, teacher_tok, tmp_path / "t"), [cross, same], text=str(text), max_length=64)
    assert list(result["students"]) == [cross, same]
    assert "kl" in result["students"][same] and "kl" not in result["students"][cross]
    m = result["students"][cross]
    assert 0 < m["aligned_positions"] and 0 < m["aligned_share"] < 1 and 0 <= m["top1_agreement"] <= 1
    assert agreement.main(["--teacher", str(tmp_path / "t"), "--student", cross, "--text", str(text)]) == 0


def test_text_pieces_cut_before_spaces_and_lose_nothing():
    text = "one two three four five six"
    pieces = text_pieces(text, 10)
    assert "".join(pieces) == text and all(len(p) <= 10 for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])


def test_gpt2_vocab_and_merges_alone_load_as_the_gpt2_tokenizer():
    tok = load_tokenizer_of(GPT2_DIR, "student.from_teacher.tokenizer")
    reference = gpt2_tokenizer()
    assert len(tok) == 50257 and tok.eos_token == "<|endoftext|>"
    for line in wikitext_lines(5):
        assert tok(line)["input_ids"] == reference(line)["input_ids"]
