"""Tokenizer transplant: a student built from teacher layers gets a new tokenizer; shared tokens keep their rows."""

import os

import pytest
import torch
from _tokenizer_helpers import SMOLLM2_DIR, byte_bpe, gpt2_tokenizer, word_merges
from conftest import make_char_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM

from llm_distill.student import student_from_teacher
from llm_distill.vocab import build_exact_map, teacher_tokenization, transplant_tokenizer


def student_tokenizer():
    # Byte-level: single bytes (many shared with the character-level teacher), "hello" and " world" (not shared),
    # bytes >= 0x80 (part of a character: the character-level teacher cannot write them) and an EOS.
    return byte_bpe(word_merges("hello") + word_merges("Ġworld"), eos="</s>")


def build(tie: bool = True):
    teacher_tok = make_char_tokenizer()
    teacher = tiny_llama(len(teacher_tok), layers=4, hidden=32, seed=3, tie_word_embeddings=tie)
    student = student_from_teacher(teacher, num_layers=2)
    return teacher, teacher_tok, student


@pytest.mark.parametrize("tie", [True, False])
def test_shared_tokens_are_copied_exactly_and_the_others_are_means_of_their_teacher_pieces(tie):
    teacher, teacher_tok, student = build(tie)
    new_tok = student_tokenizer()
    old_in = teacher.get_input_embeddings().weight.detach().clone()
    old_out = teacher.get_output_embeddings().weight.detach().clone()
    vocab_map = build_exact_map(new_tok, teacher_tok)
    report = transplant_tokenizer(student, new_tok, teacher_tok)

    new_in = student.get_input_embeddings().weight.detach()
    new_out = student.get_output_embeddings().weight.detach()
    assert new_in.shape == (len(new_tok), 32) and student.config.vocab_size == len(new_tok)
    assert report.vocab_size == len(new_tok) and report.copied == len(vocab_map) > 90
    assert report.copied + report.mean_initialised + report.fallback == len(new_tok)
    assert report.untied_head == (not tie)
    for s, t in vocab_map.student_to_teacher().items():
        assert torch.equal(new_in[s], old_in[t])
        assert torch.equal(new_out[s], old_out[t])
    a = new_tok.convert_tokens_to_ids
    t = teacher_tok.convert_tokens_to_ids
    assert torch.equal(new_in[a("Ġ")], old_in[t(" ")])  # the byte-level space is the character-level space
    assert torch.equal(new_in[new_tok.eos_token_id], old_in[teacher_tok.eos_token_id])  # EOS <-> EOS
    hello = [t(c) for c in "hello"]
    assert torch.allclose(new_in[a("hello")], old_in[hello].mean(0), atol=1e-6)
    assert torch.allclose(new_out[a("Ġworld")], old_out[[t(c) for c in " world"]].mean(0), atol=1e-6)
    # A lone byte >= 0x80 is part of a character; the character-level teacher has no way to write it.
    assert torch.allclose(new_in[a("Ã")], old_in[: len(teacher_tok)].mean(0), atol=1e-6)
    if tie:
        assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    else:
        assert not torch.equal(new_in, new_out)


def test_the_transplanted_student_runs_saves_and_loads_in_plain_transformers(tmp_path):
    _, teacher_tok, student = build(tie=False)
    new_tok = student_tokenizer()
    transplant_tokenizer(student, new_tok, teacher_tok)
    assert student.config.eos_token_id == new_tok.eos_token_id and student.config.bos_token_id is None
    ids = new_tok(["hello world", "héllo"], padding=False)["input_ids"]
    batch = torch.tensor([ids[0][:2]])
    logits = student(input_ids=batch).logits
    assert logits.shape == (1, 2, len(new_tok)) and torch.isfinite(logits).all()
    student.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(loaded(input_ids=batch).logits, logits, atol=1e-6)


def test_teacher_tokenization_of_student_tokens():
    teacher_tok = make_char_tokenizer()
    new_tok = student_tokenizer()
    pieces = teacher_tokenization(new_tok, teacher_tok)
    a, t = new_tok.convert_tokens_to_ids, teacher_tok.convert_tokens_to_ids
    assert pieces[a("Ġworld")] == [t(c) for c in " world"]
    assert pieces[a("Ã")] == []  # part of a character
    assert pieces[a("Ċ")] == [t("\n")]
    # A control byte the character vocabulary lacks comes back as [UNK], which is dropped.
    assert pieces[a("ā")] == []  # byte 0x01


def test_a_model_not_indexed_by_the_teacher_vocabulary_is_refused():
    teacher_tok = make_char_tokenizer()
    model = tiny_llama(16)
    with pytest.raises(ValueError, match="indexed by the teacher's vocabulary"):
        transplant_tokenizer(model, student_tokenizer(), teacher_tok)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SMOLLM2_DIR), reason="SmolLM2 assets not fetched")
def test_smollm2_gets_the_gpt2_tokenizer():
    from transformers import AutoTokenizer

    teacher = AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR)
    teacher_tok = AutoTokenizer.from_pretrained(SMOLLM2_DIR)
    gpt2 = gpt2_tokenizer()
    text = "The tower is 324 metres tall, about the same height as an 81-storey building."
    own = torch.tensor([teacher_tok(text)["input_ids"]])
    with torch.no_grad():
        own_loss = teacher(input_ids=own, labels=own).loss.item()
    student = student_from_teacher(teacher, num_layers=6, layer_init=[5, 10, 15, 20, 25, 30])
    old = teacher.get_input_embeddings().weight.detach().clone()
    report = transplant_tokenizer(student, gpt2, teacher_tok)
    assert report.vocab_size == 50257 and report.copied > 35000 and report.fallback < 50
    new = student.get_input_embeddings().weight.detach()
    the = gpt2.convert_tokens_to_ids("Ġthe")
    assert torch.equal(new[the], old[teacher_tok.convert_tokens_to_ids("Ġthe")])
    # The whole teacher through the transplant still models text (a 6-layer cut of it does not, even with its own
    # tokenizer, before training): far below the uniform ln(50257) = 10.8 nats per token.
    transplant_tokenizer(teacher, gpt2, teacher_tok)
    ids = torch.tensor([gpt2(text)["input_ids"]])
    with torch.no_grad():
        loss = teacher(input_ids=ids, labels=ids).loss.item()
    assert loss < min(6.0, 2 * own_loss)
