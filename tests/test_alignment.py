"""Character-offset alignment of two tokenizations, on hand-made and real tokenizers, and the losses through it."""

import os

import pytest
import torch
from _tokenizer_helpers import (
    SMOLLM2_DIR,
    byte_bpe,
    gpt2_tokenizer,
    trained_byte_bpe,
    wikitext_lines,
    word_merges,
)
from conftest import make_char_tokenizer, make_swapped_char_tokenizer

from llm_distill.losses import divergence, exact_map_divergence
from llm_distill.vocab import (
    AlignExample,
    SideText,
    TokenGroup,
    align_batch,
    build_exact_map,
    chat_example,
    gather_positions,
    prompt_example,
    text_example,
)

HELLO = word_merges("hello")
WORLD = word_merges("Ġworld")


def pairs(batch, row=0):
    mask = batch.pair_mask[row]
    return list(zip(batch.student_positions[row][mask].tolist(), batch.teacher_positions[row][mask].tolist()))


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


# ---------------------------------------------------------------- hand-made boundaries


def test_agreeing_boundaries_pair_every_counted_position_and_form_no_group():
    tok = byte_bpe(HELLO + WORLD)
    batch = align_batch([text_example("hello world hello", add_eos=True)], tok, byte_bpe(HELLO + WORLD))
    # tokens: hello, Ġworld, Ġ h e l l o, </s>: every position but the last predicts a counted token.
    n = int(batch.student_attention_mask.sum())
    assert pairs(batch) == [(i, i) for i in range(n - 1)]
    assert batch.groups == [[]]
    assert torch.equal(batch.counted_positions()[0], torch.ones(n - 1, dtype=torch.bool))


def test_a_merged_student_word_against_a_split_teacher_word_is_a_group():
    student = byte_bpe(HELLO + WORLD)  # hello | Ġworld
    teacher = byte_bpe(HELLO + [("Ġ", "w"), ("o", "r")])  # hello | Ġw | or | l | d
    batch = align_batch(["hello world"], student, teacher)
    assert teacher.convert_ids_to_tokens(batch.teacher_input_ids[0]) == ["hello", "Ġw", "or", "l", "d"]
    # Only cut 5 is shared (both predict what follows "hello"); cut 11 ends the text and nothing follows it.
    assert pairs(batch) == [(0, 0)]
    assert batch.groups == [[TokenGroup(1, 2, 1, 5, 5, 11)]]
    # Reversed: the student's positions inside " world" have no teacher counterpart.
    reverse = align_batch(["hello world"], teacher, student)
    assert pairs(reverse) == [(0, 0)]
    assert reverse.groups == [[TokenGroup(1, 5, 1, 2, 5, 11)]]


def test_a_leading_space_token_on_one_side_only():
    student = byte_bpe(HELLO + WORLD)  # hello | Ġworld
    teacher = byte_bpe(HELLO + word_merges("world"), split_spaces=True)  # hello | Ġ | world
    batch = align_batch([text_example("hello world", add_eos=True)], student, teacher)
    assert teacher.convert_ids_to_tokens(batch.teacher_input_ids[0]) == ["hello", "Ġ", "world", "</s>"]
    # cut 5 (after "hello") and cut 11 (the end: both predict their EOS) are shared; cut 6 is the teacher's alone.
    assert pairs(batch) == [(0, 0), (1, 2)]
    assert batch.groups == [[TokenGroup(1, 2, 1, 3, 5, 11)]]


def test_a_split_multibyte_character_is_never_a_boundary():
    student = byte_bpe([("Ã", "©")])  # "é" is one token
    teacher = byte_bpe()  # "é" is two byte tokens, both reporting the character's offsets (0, 1)
    batch = align_batch(["éa!"], student, teacher)
    assert teacher.convert_ids_to_tokens(batch.teacher_input_ids[0]) == ["Ã", "©", "a", "!"]
    assert pairs(batch) == [(0, 1), (1, 2)]
    assert batch.groups == [[TokenGroup(0, 1, 0, 2, 0, 1)]]
    # Both sides split the character at the same byte: still no pair inside it (offsets cannot tell).
    same = align_batch(["éa!"], teacher, teacher)
    assert pairs(same) == [(1, 1), (2, 2)]
    assert same.groups == [[TokenGroup(0, 2, 0, 2, 0, 1)]]
    # A byte token followed by a token that starts inside the same character: the first ends inside "é", so the
    # teacher's position 0 is not at cut 1 although its offsets end there.
    merged_tail = byte_bpe([("©", "l"), ("©l", "l"), ("©ll", "o")])
    batch = align_batch(["éllo!"], byte_bpe([("Ã", "©")]), merged_tail)
    assert merged_tail.convert_ids_to_tokens(batch.teacher_input_ids[0]) == ["Ã", "©llo", "!"]
    assert pairs(batch) == [(3, 1)]
    assert batch.groups == [[TokenGroup(0, 4, 0, 2, 0, 4)]]


def test_zero_width_tokens_hand_the_cut_to_the_last_position_at_it():
    from llm_distill.vocab.align import _text_cuts

    # One prefix token (cut 0), then a zero-width text token, "abc", a zero-width token, "def" (text of 6 chars):
    # the position that has consumed "abc" *and* the zero-width token is the one whose next token is "def".
    offsets = [(0, 0), (0, 3), (3, 3), (3, 6)]
    assert _text_cuts(offsets, first_text=1, length=6) == {0: 1, 3: 3, 6: 4}
    # Trailing characters a tokenizer drops (stripped whitespace) still count as consumed by the last token.
    assert _text_cuts([(0, 3), (4, 7)], first_text=0, length=9) == {3: 0, 9: 1}


def test_bos_pairs_with_bos_only_when_both_sides_add_one():
    with_bos = byte_bpe(HELLO + WORLD, bos="<s>")
    without = byte_bpe(HELLO + WORLD)
    both = align_batch(["hello world"], with_bos, byte_bpe(HELLO + WORLD, bos="<s>"))
    assert with_bos.convert_ids_to_tokens(both.student_input_ids[0]) == ["<s>", "hello", "Ġworld"]
    assert pairs(both) == [(0, 0), (1, 1)]  # BOS <-> BOS predicts the first word
    one = align_batch(["hello world"], with_bos, without)
    assert pairs(one) == [(1, 0)]  # the student's BOS position has no teacher counterpart
    other = align_batch(["hello world"], without, with_bos)
    assert pairs(other) == [(0, 1)]
    assert both.student_labels[0, 0].item() == -100  # BOS is never a counted token


def test_eos_pairs_with_eos_only_when_both_sides_end_with_one():
    tok = byte_bpe(HELLO + WORLD)
    both = align_batch([text_example("hello world", add_eos=True)], tok, tok)
    assert pairs(both) == [(0, 0), (1, 1)]  # (1, 1): both predict their EOS after "world"
    student_only = AlignExample("hello world", SideText(add_eos=True), SideText(add_eos=False))
    assert pairs(align_batch([student_only], tok, tok)) == [(0, 0)]


def test_special_token_text_inside_the_shared_text_is_an_ordinary_token():
    student = byte_bpe(HELLO, specials=["<sep>"])
    teacher = byte_bpe(HELLO)  # writes "<sep>" as five byte tokens
    batch = align_batch(["hello<sep>hello"], student, teacher)
    assert student.convert_ids_to_tokens(batch.student_input_ids[0]) == ["hello", "<sep>", "hello"]
    assert pairs(batch) == [(0, 0), (1, 5)]
    assert batch.groups == [[TokenGroup(1, 2, 1, 6, 5, 10)]]


def test_prompt_is_not_counted_and_its_last_token_pairs_with_the_other_sides():
    student = byte_bpe(HELLO + WORLD, bos="<s>")
    teacher = byte_bpe(HELLO + [("Ġ", "w")])
    batch = align_batch([prompt_example("Q:", " hello world")], student, teacher)
    s_tokens = student.convert_ids_to_tokens(batch.student_input_ids[0])
    t_tokens = teacher.convert_ids_to_tokens(batch.teacher_input_ids[0])
    assert s_tokens == ["<s>", "Q", ":", "Ġ", "hello", "Ġworld", "</s>"]
    assert t_tokens == ["Q", ":", "Ġ", "hello", "Ġw", "o", "r", "l", "d", "</s>"]
    assert batch.student_labels[0].tolist()[:3] == [-100, -100, -100]
    # cut 0 (":" on both sides), cut 1 (" "), cut 6 (after " hello"), cut 12 (both predict EOS).
    assert pairs(batch) == [(2, 1), (3, 2), (4, 3), (5, 8)]


def test_chat_templates_align_the_completion_and_the_end_of_turn():
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    plain = (
        "{% for m in messages %}### {{ m['role'] }}:{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}### assistant:{% endif %}"
    )
    student = byte_bpe(HELLO + WORLD, chat_template=plain)
    teacher = byte_bpe(HELLO + WORLD, eos="<|im_end|>", specials=["<|im_start|>"], chat_template=chatml)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello world"}]
    batch = align_batch([chat_example(messages, student, teacher)], student, teacher)
    s_tokens = student.convert_ids_to_tokens(batch.student_input_ids[0])
    t_tokens = teacher.convert_ids_to_tokens(batch.teacher_input_ids[0])
    assert s_tokens[-3:] == ["hello", "Ġworld", "</s>"]
    assert t_tokens[-4:] == ["hello", "Ġworld", "<|im_end|>", "Ċ"]
    labels = batch.student_labels[0].tolist()
    assert labels[: len(s_tokens) - 3] == [-100] * (len(s_tokens) - 3)
    s_end, t_end = len(s_tokens) - 1, len(t_tokens) - 2  # index of each side's end-of-turn token
    assert pairs(batch) == [(s_end - 3, t_end - 3), (s_end - 2, t_end - 2), (s_end - 1, t_end - 1)]
    vocab_map = build_exact_map(student, teacher).student_to_teacher()
    assert vocab_map[student.eos_token_id] == teacher.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(ValueError, match="student tokenizer has no chat_template"):
        chat_example(messages, byte_bpe(), teacher)


def test_truncation_drops_pairs_beyond_either_side():
    tok = byte_bpe(HELLO + WORLD)
    text = text_example("hello world hello world", add_eos=True)  # hello Ġworld Ġ hello Ġworld </s>
    full = align_batch([text], tok, tok)
    n = len(pairs(full))
    assert pairs(align_batch([text], tok, tok, teacher_max_length=2)) == [(0, 0), (1, 1)]
    assert pairs(align_batch([text], tok, tok, max_length=3)) == [(0, 0), (1, 1)]  # position 2 has no next token
    assert n > 2


def test_left_padding_shifts_every_index_and_gathers_the_same_tokens(gpt2):
    teacher = trained_byte_bpe(" ".join(wikitext_lines(200)), vocab_size=300)
    rows = [text_example(line, add_eos=True) for line in wikitext_lines(3)] + [prompt_example("Q: hi", " Yes.")]
    right = align_batch(rows, gpt2, teacher)
    left = align_batch(rows, gpt2, teacher, padding_side="left")
    assert torch.equal(right.pair_mask, left.pair_mask)
    for side in ("student", "teacher"):
        ids_r, ids_l = getattr(right, f"{side}_input_ids"), getattr(left, f"{side}_input_ids")
        pos_r, pos_l = getattr(right, f"{side}_positions"), getattr(left, f"{side}_positions")
        got_r = gather_positions(ids_r, pos_r)[right.pair_mask]
        assert torch.equal(got_r, gather_positions(ids_l, pos_l)[left.pair_mask])
    nxt = right.student_positions + 1
    assert torch.equal(
        gather_positions(right.student_labels, nxt)[right.pair_mask],
        gather_positions(left.student_labels, left.student_positions + 1)[left.pair_mask],
    )
    for g_r, g_l, b in zip(right.groups, left.groups, range(len(rows))):
        assert [right.student_input_ids[b, g.student_start : g.student_end].tolist() for g in g_r] == [
            left.student_input_ids[b, g.student_start : g.student_end].tolist() for g in g_l
        ]
    with pytest.raises(ValueError, match="padding_side='middle'"):
        align_batch(rows, gpt2, teacher, padding_side="middle")


def test_a_sentencepiece_style_teacher_against_a_byte_level_student(gpt2):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = [*word_merges("\u2581hello"), *word_merges("\u2581apple")]
    vocab = {c: i for i, c in enumerate(["<unk>", "</s>", *"\u25811aplehowrd"])}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    teacher = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    batch = align_batch([text_example("hello world 1 apple", add_eos=True)], gpt2, teacher)
    assert gpt2.convert_ids_to_tokens(batch.student_input_ids[0]) == [
        "hello",
        "Ġworld",
        "Ġ1",
        "Ġapple",
        "<|endoftext|>",
    ]
    assert teacher.convert_ids_to_tokens(batch.teacher_input_ids[0]) == [
        *["\u2581hello", "\u2581", "w", "o", "r", "l", "d", "\u2581", "1", "\u2581apple", "</s>"]
    ]
    assert pairs(batch) == [(0, 0), (1, 6), (2, 8), (3, 9)]
    assert batch.groups == [[TokenGroup(1, 2, 1, 7, 5, 11), TokenGroup(2, 3, 7, 9, 11, 13)]]


def test_trimmed_offsets_align_like_untrimmed_ones(gpt2):
    # RoBERTa-style post-processors trim whitespace off the offsets (" world" reports (6, 11), a lone " " collapses
    # to its end): the end of each token, which is all the cut uses, is unchanged.
    from tokenizers import processors

    trimmed = gpt2_tokenizer()
    trimmed.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    text = " Hello  world \n\n  x y   z\t\tq  "
    assert (
        trimmed(text, return_offsets_mapping=True)["offset_mapping"][1]
        != gpt2(text, return_offsets_mapping=True)["offset_mapping"][1]
    )
    batch = align_batch([text], gpt2, trimmed)
    assert pairs(batch) == [(i, i) for i in range(int(batch.counted_positions().sum()))]


def test_a_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast tokenizer"):
        align_batch(["x"], Slow(), byte_bpe())


# ---------------------------------------------------------------- against a decoding oracle on real text


def oracle_pairs(text: str, student, teacher) -> list[tuple[int, int]]:
    """Pairs found without offsets: decode every prefix of each side's tokens; a position is at cut c when its
    decoded prefix is exactly the first c characters of the text; the last position at each cut counts."""

    def cuts(tok):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        found = {}
        for k in range(len(ids)):
            prefix = tok.backend_tokenizer.decode(ids[: k + 1], skip_special_tokens=False)
            if text.startswith(prefix):
                found[len(prefix)] = k
        return found, len(ids)

    s_cuts, n_s = cuts(student)
    t_cuts, _ = cuts(teacher)
    return [(s_cuts[c], t_cuts[c]) for c in sorted(s_cuts.keys() & t_cuts.keys()) if s_cuts[c] + 1 < n_s]


def test_pairs_match_a_decoding_oracle_on_wikitext(gpt2):
    lines = wikitext_lines(40)
    teacher = trained_byte_bpe("\n".join(wikitext_lines(400)[40:]), vocab_size=350)
    lines.append("naïve café — 日本語 😀 text,  double  spaces\tand tabs")
    batch = align_batch(lines, gpt2, teacher)
    total_pairs, total_counted = 0, 0
    for b, line in enumerate(lines):
        assert pairs(batch, b) == oracle_pairs(line, gpt2, teacher), line
        total_pairs += len(pairs(batch, b))
        total_counted += int(batch.counted_positions()[b].sum())
    assert 0.3 < total_pairs / total_counted < 1.0  # real, differing tokenizers: many pairs, not all


def test_identical_tokenizers_give_the_ordinary_loss(gpt2):
    rows = [text_example(line, add_eos=True) for line in wikitext_lines(3)] + [prompt_example("Q: hi", " Yes.")]
    batch = align_batch(rows, gpt2, gpt2)
    assert torch.equal(batch.student_input_ids, batch.teacher_input_ids)
    assert torch.equal(batch.student_positions, batch.teacher_positions)
    assert batch.groups == [[] for _ in rows]
    # Every counted prediction position is paired, and nothing else.
    shifted = batch.counted_positions()
    assert int(batch.pair_mask.sum()) == int(shifted.sum())
    torch.manual_seed(0)
    width, vocab = batch.student_input_ids.shape[1], 64  # small random logits: the vocabulary size is irrelevant
    z_s, z_t = torch.randn(len(rows), width, vocab), torch.randn(len(rows), width, vocab)
    ordinary = divergence(z_s[:, :-1], z_t[:, :-1], kind="jsd", mask=shifted, temperature=2.0)
    ids = torch.arange(vocab)
    aligned = exact_map_divergence(
        gather_positions(z_s, batch.student_positions),
        gather_positions(z_t, batch.teacher_positions),
        ids,
        ids,
        kind="jsd",
        temperature=2.0,
        mask=batch.pair_mask,
    )
    assert aligned.item() == pytest.approx(ordinary.item(), rel=1e-5)


def test_a_permuted_student_vocabulary_gives_the_ordinary_loss_through_the_exact_map():
    teacher = make_char_tokenizer()
    student = make_swapped_char_tokenizer("a", "e")  # same tokens, ids of "a" and "e" swapped
    vocab_map = build_exact_map(student, teacher)
    assert len(vocab_map) == len(teacher)
    perm = torch.empty(len(teacher), dtype=torch.long)
    perm[vocab_map.teacher_ids] = vocab_map.student_ids  # teacher id -> student id
    assert perm[teacher.convert_tokens_to_ids("a")] == teacher.convert_tokens_to_ids("e")
    rows = [prompt_example("Q: ", "a cat ate"), text_example("abcde edcba", add_eos=True)]
    batch = align_batch(rows, student, teacher)
    assert torch.equal(batch.student_positions, batch.teacher_positions)
    torch.manual_seed(1)
    shape = (*batch.student_input_ids.shape, len(teacher))
    z_t, z_s_teacher_ids = torch.randn(shape), torch.randn(shape)
    z_s = torch.empty_like(z_s_teacher_ids)
    z_s[..., perm] = z_s_teacher_ids  # the same student distribution in the student's own ids
    ordinary = divergence(z_s_teacher_ids[:, :-1], z_t[:, :-1], mask=batch.counted_positions())
    exact = exact_map_divergence(
        gather_positions(z_s, batch.student_positions),
        gather_positions(z_t, batch.teacher_positions),
        vocab_map.student_ids,
        vocab_map.teacher_ids,
        mask=batch.pair_mask,
    )
    assert exact.item() == pytest.approx(ordinary.item(), rel=1e-5)


def test_a_row_aligns_the_same_whatever_the_batch(gpt2):
    # Micro-batches of a window see the same pairs as the whole batch: the counted total is additive.
    teacher = trained_byte_bpe("\n".join(wikitext_lines(300)), vocab_size=300)
    lines = wikitext_lines(6)
    whole = align_batch(lines, gpt2, teacher)
    halves = [align_batch(lines[:3], gpt2, teacher), align_batch(lines[3:], gpt2, teacher)]
    assert [pairs(whole, b) for b in range(6)] == [pairs(h, b) for h in halves for b in range(3)]
    assert int(whole.pair_mask.sum()) == sum(int(h.pair_mask.sum()) for h in halves)


# ---------------------------------------------------------------- the real pair (slow)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SMOLLM2_DIR), reason="SmolLM2 assets not fetched")
def test_gpt2_student_smollm2_teacher_on_wikitext(gpt2):
    from transformers import AutoTokenizer

    teacher = AutoTokenizer.from_pretrained(SMOLLM2_DIR)
    lines = wikitext_lines(60)
    batch = align_batch([text_example(line, add_eos=True) for line in lines], gpt2, teacher)
    for b, line in enumerate(lines[:20]):
        assert pairs(batch, b)[:-1] == oracle_pairs(line, gpt2, teacher)  # the last pair is the EOS pair
    share = batch.pair_mask.sum().item() / batch.counted_positions().sum().item()
    assert share > 0.8
    vocab_map = build_exact_map(gpt2, teacher)
    assert len(vocab_map) > 30000
    assert vocab_map.student_to_teacher()[gpt2.eos_token_id] == teacher.eos_token_id
