"""Align the same raw text under two tokenizers, by character offsets, at the positions where both predict.

Each row is a shared text (a plain document, or the completion of a prompt / chat turn) that both sides tokenize,
each inside its own rendering: a prefix before it (the tokenizer's own BOS-like specials, a prompt, a chat header
from the side's chat template), the text itself, and an end after it (the chat template's end of turn, an EOS).
The three segments are tokenized separately, so a token boundary always falls at both ends of the shared text, as
``data.py`` tokenizes prompt and response separately.

**Aligned positions.** Logits at position t of a causal LM predict token t + 1. A position is *at cut c* when the
tokens up to it have consumed exactly the first c characters of the shared text (the last prefix token is at cut 0;
a text token is at the character offset where it ends). When student position i and teacher position j are at the
same cut, both predict what follows the same text: (i, j) is an aligned pair. Precisely, from the fast tokenizers'
``offset_mapping`` (``(start, end)`` per token, relative to the shared text):

- a text token is at cut ``end`` unless the next token starts before ``end`` (byte-level BPE splits a multi-byte
  character into several tokens that all report the character's span: only the last of them ends the character;
  positions inside a character are never aligned, even where both sides split it at the same byte);
- the last text token is at cut ``len(text)`` (characters a tokenizer drops at the end still count as consumed);
  a SentencePiece tokenizer's prepended "▁" is reported inside the first character's span, so it ends inside that
  character like a split byte;
- where several positions of one side share a cut (a zero-width token), the last of them is the one at the cut: it
  is the one whose next token carries the following text;
- at cut ``len(text)`` both sides predict their own end marker (EOS, end of turn): the pair counts only when the
  teacher also has one after the text, and the exact map pairs the two EOS ids (``exact_map.build_exact_map``).

A pair counts only where the student's next token is counted (labelled: text and end, never prefix or padding)
and the teacher position exists after truncation. So BOS <-> BOS is the pair at cut 0 when both sides put at least
one token (BOS or prompt) before the text; a side with nothing before the text cannot predict its first token and
that position stays unpaired. Special tokens inside the text are ordinary tokens here: they have characters.

**Groups.** Between two consecutive cuts shared by both sides (or the ends of the text), the student tokens and the
teacher tokens cover the same characters. Where either side has more than one token there, the tokenizations
differ: this run of student tokens against that run of teacher tokens is a :class:`TokenGroup` (e.g. student
``" wor" "ld"`` against teacher ``" world"``). What the losses (``losses/cross_vocab.py``) do with a group: the
position *before* the group is an aligned pair and is compared (both sides predict the group's first token, each in
its own vocabulary; ULD compares the sorted distributions, ``exact`` the matched ids + tails, ``hybrid`` both);
positions strictly inside a group have consumed different text on the two sides and are compared by no KD term
(the student is trained there by CE only); the group's last token ends at the next shared cut, an aligned pair
again. The groups are returned so that a caller can measure this, or add a term over whole groups.

**Padding.** Right padding by default (``padding_side="right"``: ids with the pad id, attention mask 0, labels
-100); positions index the padded sequences. With ``padding_side="left"`` each row is shifted right by its pad count
and every index (positions, groups) is shifted with it, so gathering at the returned indices gives the same logits
for a model that handles left padding through its attention mask (and position ids, for generation).

**Truncation.** ``max_length`` / ``teacher_max_length`` keep the first tokens of each side; pairs and groups beyond
either side's kept tokens are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class SideText:
    """How one side renders the shared text: ``prefix`` + text + ``suffix``.

    ``special_tokens``: put the tokenizer's own specials around it (those ``tokenizer(x)`` adds: BOS for Llama,
    nothing for GPT-2). ``add_eos``: append ``eos_token`` at the end (unless the rendering already ends with it).
    The prefix is not counted (labels -100); the text, suffix and EOS are.
    """

    prefix: str = ""
    suffix: str = ""
    special_tokens: bool = True
    add_eos: bool = False


@dataclass(frozen=True)
class AlignExample:
    """One row: the shared ``text`` and how each side renders it."""

    text: str
    student: SideText = field(default_factory=SideText)
    teacher: SideText = field(default_factory=SideText)


def text_example(text: str, *, add_eos: bool = False) -> AlignExample:
    """A plain document, every token counted (as ``data.py`` does without packing; ``add_eos`` ends it with EOS)."""
    side = SideText(add_eos=add_eos)
    return AlignExample(text, side, side)


def prompt_example(prompt: str, completion: str, *, add_eos: bool = True) -> AlignExample:
    """A prompt (not counted) and its completion, rendered as ``data.py`` does: specials + prompt, completion, EOS."""
    side = SideText(prefix=prompt, add_eos=add_eos)
    return AlignExample(completion, side, side)


def _chat_side(tokenizer, messages: list[dict], name: str) -> SideText:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the {name} tokenizer has no chat_template; set tokenizer.chat_template, or use prompt_example with "
            "plain prompt/completion text"
        )
    content = messages[-1]["content"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt + content):
        raise ValueError(
            f"the {name} chat template does not render the conversation as its generation prompt followed by the "
            "assistant's content verbatim; the completion cannot be located in the rendered text"
        )
    # The template writes its specials as text: tokenize the rendering as apply_chat_template(tokenize=True) does.
    return SideText(prefix=prompt, suffix=full[len(prompt) + len(content) :], special_tokens=False, add_eos=False)


def chat_example(messages: Sequence[dict], student_tokenizer, teacher_tokenizer) -> AlignExample:
    """A conversation whose last (assistant) message is the counted text, each side through its chat template."""
    messages = list(messages)
    if not messages or messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
        raise ValueError("messages: the last message must be the assistant's, with string content")
    return AlignExample(
        messages[-1]["content"],
        _chat_side(student_tokenizer, messages, "student"),
        _chat_side(teacher_tokenizer, messages, "teacher"),
    )


@dataclass(frozen=True)
class TokenGroup:
    """Student tokens ``[student_start, student_end)`` and teacher tokens ``[teacher_start, teacher_end)`` (indices
    into the padded sequences) cover the same characters ``[char_start, char_end)`` of the shared text, and their
    boundaries differ inside it."""

    student_start: int
    student_end: int
    teacher_start: int
    teacher_end: int
    char_start: int
    char_end: int


@dataclass
class AlignedBatch:
    """Both sides' inputs and the aligned prediction positions.

    ``student_input_ids``/``student_attention_mask``/``student_labels``: ``(B, S)`` (labels -100 on prefix and
    padding); ``teacher_input_ids``/``teacher_attention_mask``: ``(B, T)``; ``student_positions`` and
    ``teacher_positions``: ``(B, P)`` int64 indices into those sequences (0 where unpaired); ``pair_mask``: ``(B, P)``
    bool. Pair p of row b: the student's logits at ``student_positions[b, p]`` and the teacher's at
    ``teacher_positions[b, p]`` predict the next token after the same text. ``groups[b]``: that row's groups.
    """

    student_input_ids: torch.Tensor
    student_attention_mask: torch.Tensor
    student_labels: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_attention_mask: torch.Tensor
    student_positions: torch.Tensor
    teacher_positions: torch.Tensor
    pair_mask: torch.Tensor
    groups: list[list[TokenGroup]]
    padding_side: str = "right"

    def student_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.student_input_ids,
            "attention_mask": self.student_attention_mask,
            "labels": self.student_labels,
        }

    def teacher_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.teacher_input_ids, "attention_mask": self.teacher_attention_mask}

    def counted_positions(self) -> torch.Tensor:
        """``(B, S - 1)`` bool: student positions whose next token is counted (the CE mask after the shift)."""
        return self.student_labels[:, 1:] != -100


def gather_positions(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``values`` ``(B, L, ...)`` at ``positions`` ``(B, P)`` -> ``(B, P, ...)``: logits at the aligned positions,
    or hidden states there (so a fused lm_head + loss only ever sees the aligned rows)."""
    if values.shape[0] != positions.shape[0]:
        raise ValueError(f"values has batch size {values.shape[0]} but positions has {positions.shape[0]}")
    rows = torch.arange(values.shape[0], device=values.device).unsqueeze(1)
    return values[rows, positions.to(values.device)]


@dataclass
class _Side:
    """One side of one row, before padding."""

    ids: list[int]
    labels: list[int]
    cuts: dict[int, int]  # cut (characters of the text consumed) -> token index at that cut
    first_text: int  # index of the first text token (= number of prefix tokens)
    has_end: bool  # tokens follow the text (suffix / EOS): the side predicts an end marker at cut len(text)


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The ids ``tokenizer(x)`` puts before and after the text of x (BOS, EOS, ...), found on a probe."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise ValueError(f"{type(tokenizer).__name__}: cannot locate the text among the special tokens it adds")


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not any(texts):
        return [[] for _ in texts]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _text_cuts(offsets: list[tuple[int, int]], first_text: int, length: int) -> dict[int, int]:
    cuts = {0: first_text - 1} if first_text > 0 else {}
    for k, (_, end) in enumerate(offsets):
        if k == len(offsets) - 1:
            cut = length
        elif end <= offsets[k + 1][0]:
            cut = end
        else:
            continue  # the next token shares a character with this one: this token ends inside it
        cuts[cut] = first_text + k  # later positions at the same cut win
    return cuts


def _encode_side(tokenizer, examples: list[AlignExample], which: str, max_length: int | None) -> list[_Side]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"the {which} tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; alignment needs "
            "return_offsets_mapping (load it with use_fast=True)"
        )
    sides = [getattr(ex, which) for ex in examples]
    texts = [ex.text for ex in examples]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    prefixes = _encode(tokenizer, [s.prefix for s in sides])
    suffixes = _encode(tokenizer, [s.suffix for s in sides])
    affixes = _special_affixes(tokenizer) if any(s.special_tokens for s in sides) else ([], [])
    out = []
    for b, side in enumerate(sides):
        before, after = affixes if side.special_tokens else ([], [])
        head = [*before, *prefixes[b]]
        text_ids = list(enc["input_ids"][b])
        tail = [*suffixes[b], *after]
        if side.add_eos:
            if tokenizer.eos_token_id is None:
                raise ValueError(f"add_eos=True but the {which} tokenizer has no eos_token")
            if not tail or tail[-1] != tokenizer.eos_token_id:
                tail.append(tokenizer.eos_token_id)
        ids = head + text_ids + tail
        labels = [-100] * len(head) + ids[len(head) :]
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        offsets = [tuple(o) for o in enc["offset_mapping"][b]]
        cuts = _text_cuts(offsets, len(head), len(texts[b]))
        out.append(_Side(ids, labels, cuts, len(head), bool(tail)))
    return out


def _row_pairs(student: _Side, teacher: _Side, length: int) -> list[tuple[int, int]]:
    pairs = []
    for cut in sorted(student.cuts.keys() & teacher.cuts.keys()):
        i, j = student.cuts[cut], teacher.cuts[cut]
        if cut == length and not teacher.has_end:
            continue  # the student predicts its end marker, the teacher only a continuation
        if i + 1 >= len(student.ids) or student.labels[i + 1] == -100 or j >= len(teacher.ids):
            continue
        pairs.append((i, j))
    return pairs


def _row_groups(student: _Side, teacher: _Side, length: int) -> list[TokenGroup]:
    def index(side: _Side, cut: int) -> int:
        # The ends of the text are token boundaries on both sides even without a position at that cut.
        return side.cuts.get(cut, side.first_text - 1)

    bounds = sorted((student.cuts.keys() & teacher.cuts.keys()) | {0, length})
    groups = []
    for a, b in zip(bounds, bounds[1:]):
        s0, s1, t0, t1 = index(student, a) + 1, index(student, b) + 1, index(teacher, a) + 1, index(teacher, b) + 1
        if (s1 - s0, t1 - t0) == (1, 1) or s1 > len(student.ids) or t1 > len(teacher.ids):
            continue
        groups.append(TokenGroup(s0, s1, t0, t1, a, b))
    return groups


def _pad(rows: list[list[int]], value: int, width: int, left: bool) -> torch.Tensor:
    padded = [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # padding is masked out of every loss, so which id fills it does not matter


def align_batch(
    examples: Sequence[AlignExample | str],
    student_tokenizer,
    teacher_tokenizer,
    *,
    max_length: int | None = None,
    teacher_max_length: int | None = None,
    padding_side: str = "right",
) -> AlignedBatch:
    """Tokenize each example for both sides and pair their prediction positions (see the module docstring).

    Args:
        examples: :class:`AlignExample` rows (:func:`text_example`, :func:`prompt_example`, :func:`chat_example`);
            a plain string is ``text_example(string)``.
        max_length, teacher_max_length: keep at most this many tokens per row on that side (None: all).
        padding_side: ``right`` (training) or ``left``.
    Returns:
        an :class:`AlignedBatch`.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r} is not accepted; expected one of {', '.join(PADDING_SIDES)}")
    for name, value in (("max_length", max_length), ("teacher_max_length", teacher_max_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be a positive number of tokens or None")
    rows = [text_example(ex) if isinstance(ex, str) else ex for ex in examples]
    if not rows:
        raise ValueError("examples is empty; align_batch needs at least one row")
    students = _encode_side(student_tokenizer, rows, "student", max_length)
    teachers = _encode_side(teacher_tokenizer, rows, "teacher", teacher_max_length)
    pairs = [_row_pairs(s, t, len(r.text)) for s, t, r in zip(students, teachers, rows)]
    groups = [_row_groups(s, t, len(r.text)) for s, t, r in zip(students, teachers, rows)]

    left = padding_side == "left"
    width_s = max(len(s.ids) for s in students)
    width_t = max(len(t.ids) for t in teachers)
    width_p = max(len(p) for p in pairs)
    positions_s = torch.zeros(len(rows), width_p, dtype=torch.long)
    positions_t = torch.zeros(len(rows), width_p, dtype=torch.long)
    pair_mask = torch.zeros(len(rows), width_p, dtype=torch.bool)
    for b, (s, t) in enumerate(zip(students, teachers)):
        shift_s = width_s - len(s.ids) if left else 0
        shift_t = width_t - len(t.ids) if left else 0
        for p, (i, j) in enumerate(pairs[b]):
            positions_s[b, p], positions_t[b, p], pair_mask[b, p] = i + shift_s, j + shift_t, True
        groups[b] = [
            TokenGroup(
                g.student_start + shift_s,
                g.student_end + shift_s,
                g.teacher_start + shift_t,
                g.teacher_end + shift_t,
                g.char_start,
                g.char_end,
            )
            for g in groups[b]
        ]
    return AlignedBatch(
        student_input_ids=_pad([s.ids for s in students], _pad_id(student_tokenizer), width_s, left),
        student_attention_mask=_pad([[1] * len(s.ids) for s in students], 0, width_s, left),
        student_labels=_pad([s.labels for s in students], -100, width_s, left),
        teacher_input_ids=_pad([t.ids for t in teachers], _pad_id(teacher_tokenizer), width_t, left),
        teacher_attention_mask=_pad([[1] * len(t.ids) for t in teachers], 0, width_t, left),
        student_positions=positions_s,
        teacher_positions=positions_t,
        pair_mask=pair_mask,
        groups=groups,
        padding_side=padding_side,
    )
