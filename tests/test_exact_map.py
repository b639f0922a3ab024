"""The exact vocabulary map: token strings normalised to bytes, matched across byte-level and SentencePiece styles."""

import pytest
import torch
from _tokenizer_helpers import byte_bpe, gpt2_tokenizer, metaspace_tokenizer, word_merges

from llm_distill.vocab import build_exact_map, normalize_token, token_bytes, token_scheme
from llm_distill.vocab.exact_map import byte_alphabet

HELLO = word_merges("hello")


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


def test_normalisation_of_byte_level_and_space_markers():
    assert normalize_token("Ġworld", "byte_level") == b" world"
    assert normalize_token("ĊĊ", "byte_level") == b"\n\n"
    assert normalize_token("Ã©", "byte_level") == "é".encode()
    assert normalize_token("\u2581world", "metaspace") == b" world"
    assert normalize_token("<0x0A>", "metaspace") == b"\n"
    assert normalize_token("world", "plain") == b"world"
    # The byte alphabet is a bijection onto 256 printable characters, and GPT-2's single-byte tokens are exactly it.
    alphabet = byte_alphabet()
    assert sorted(alphabet) == list(range(256)) and len(set(alphabet.values())) == 256
    assert alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ"


def test_gpt2_vocabulary_decodes_to_distinct_bytes(gpt2):
    assert token_scheme(gpt2) == "byte_level"
    data = token_bytes(gpt2)
    assert len(data) == 50256 and len(set(data.values())) == 50256  # every ordinary token, no added <|endoftext|>
    assert {bytes([b]) for b in range(256)} <= set(data.values())
    assert data[gpt2.convert_tokens_to_ids("Ġthe")] == b" the"


def test_exact_map_across_byte_level_and_metaspace_vocabularies(gpt2):
    teacher = metaspace_tokenizer(["\u2581the", "\u2581world", "<0x0A>", "\n", "A", "<0x41>", "zzzqqq"])
    assert token_scheme(teacher) == "metaspace"
    mapped = build_exact_map(gpt2, teacher).student_to_teacher()
    t = teacher.convert_tokens_to_ids
    assert mapped[gpt2.convert_tokens_to_ids("Ġthe")] == t("\u2581the")
    assert mapped[gpt2.convert_tokens_to_ids("Ġworld")] == t("\u2581world")
    assert mapped[gpt2.convert_tokens_to_ids("Ċ")] == t("\n")  # the ordinary piece wins over <0x0A>
    assert mapped[gpt2.convert_tokens_to_ids("A")] == t("A")
    assert mapped[gpt2.eos_token_id] == teacher.eos_token_id  # EOS <-> EOS whatever their strings
    assert t("zzzqqq") not in mapped.values() and t("<0x41>") not in mapped.values()


def test_exact_map_of_a_tokenizer_with_itself_is_the_identity(gpt2):
    vocab_map = build_exact_map(gpt2, gpt2)
    assert torch.equal(vocab_map.student_ids, torch.arange(len(gpt2)))
    assert torch.equal(vocab_map.teacher_ids, torch.arange(len(gpt2)))


def test_special_pairs_replace_content_matches():
    student = byte_bpe(HELLO, eos="</s>", specials=["<|im_end|>"])
    teacher = byte_bpe(HELLO, eos="<|im_end|>", specials=["</s>"])
    # Default: the EOS tokens are paired with each other, not with the same-content added tokens.
    mapped = build_exact_map(student, teacher).student_to_teacher()
    s, t = student.convert_tokens_to_ids, teacher.convert_tokens_to_ids
    assert mapped[s("</s>")] == t("<|im_end|>") and s("<|im_end|>") not in mapped
    # No forced pairs: added tokens match by content.
    by_content = build_exact_map(student, teacher, special_pairs=[]).student_to_teacher()
    assert by_content[s("</s>")] == t("</s>") and by_content[s("<|im_end|>")] == t("<|im_end|>")
    with pytest.raises(ValueError, match="out of range"):
        build_exact_map(student, teacher, special_pairs=[(10**6, 0)])
