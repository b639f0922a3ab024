"""Token strings as bytes, and the exact-match map between two vocabularies.

A token's *string* in a vocabulary file is an encoding of the text it stands for, and encodings differ between
families: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) writes each byte as a printable character ("Ġ" for a space,
"Ċ" for a newline), SentencePiece-style vocabularies (Llama 2, Mistral, Gemma) write a space as "▁" and raw bytes as
"<0xNN>", and word- or character-level vocabularies write the text itself. :func:`token_bytes` undoes the encoding,
so every ordinary token becomes the bytes of text it produces; two tokens of two vocabularies *match* when these
bytes are equal ("Ġworld" in GPT-2 and "▁world" in Llama 2 both are b" world"). Bytes rather than text, so that
byte-level tokens holding part of a UTF-8 character match too.

Added tokens (specials such as ``<|endoftext|>``, chat markers) are literal strings outside the model's vocabulary
encoding: they match only an added token of the same content on the other side, and the two end-of-text tokens are
paired whatever their strings (``special_pairs``, default ``[(student eos, teacher eos)]``), because a student
predicting its EOS and a teacher predicting its EOS predict the same event (the aligner in ``align.py`` puts each
side's own EOS after the text).

The map is one-to-one. Where two ids of one vocabulary stand for the same bytes (a SentencePiece byte-fallback
piece ``<0x41>`` beside the piece ``A``), the ordinary piece is kept, else the lowest id; the other id is unmatched
and its mass goes to that side's tail class in the ``exact`` loss.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch

TOKEN_SCHEMES = ("byte_level", "metaspace", "plain")
METASPACE = "\u2581"  # "▁"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2, Radford et al. 2019).

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, 0x7F-0xA0, 0xAD) are shifted to
    the code points 256, 257, ... in byte order, which is why a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def _byte_alphabet_inverse() -> dict[str, int]:
    return {c: b for b, c in byte_alphabet().items()}


def _decoder_types(tokenizer) -> tuple[set[str], str | None]:
    """Types of the backend decoder (flattening ``Sequence``) and the pattern a ``Replace`` decoder turns into " "."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; cross-tokenizer methods need one")
    decoder = backend.decoder
    if decoder is None:
        return set(), None
    state = json.loads(decoder.__getstate__())
    types, replaced = set(), None
    stack = [state]
    while stack:
        node = stack.pop()
        types.add(node.get("type"))
        stack.extend(node.get("decoders") or [])
        if node.get("type") == "Replace" and node.get("content") == " ":
            replaced = (node.get("pattern") or {}).get("String")
    return types, replaced


def token_scheme(tokenizer) -> str:
    """How the vocabulary writes its tokens: ``byte_level``, ``metaspace`` ("▁" for spaces, "<0xNN>" for bytes)
    or ``plain`` (the token string is the text), read from the tokenizer's decoder."""
    types, replaced = _decoder_types(tokenizer)
    if "ByteLevel" in types:
        return "byte_level"
    if "Metaspace" in types or replaced == METASPACE or "ByteFallback" in types:
        return "metaspace"
    return "plain"


def normalize_token(token: str, scheme: str) -> bytes:
    """The bytes of text that the vocabulary string ``token`` stands for under ``scheme`` (see the module doc)."""
    if scheme == "byte_level":
        inverse = _byte_alphabet_inverse()
        try:
            return bytes([inverse[c] for c in token])
        except KeyError:
            return token.encode("utf-8")  # not in the byte alphabet: an added token written as text
    if scheme == "metaspace":
        fallback = _BYTE_FALLBACK.match(token)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return token.replace(METASPACE, " ").encode("utf-8")
    if scheme == "plain":
        return token.encode("utf-8")
    raise ValueError(f"scheme={scheme!r} is not known; expected one of {', '.join(TOKEN_SCHEMES)}")


def added_token_ids(tokenizer) -> set[int]:
    """Ids of added tokens (specials, chat markers): literal strings outside the vocabulary's byte encoding."""
    return set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Bytes of text of every ordinary (not added) token id, by :func:`normalize_token`."""
    scheme = token_scheme(tokenizer)
    added = added_token_ids(tokenizer)
    return {i: normalize_token(tok, scheme) for tok, i in tokenizer.get_vocab().items() if i not in added}


def _unique_by_key(items: Iterable[tuple[bytes | str, int, bool]]) -> dict[bytes | str, int]:
    """key -> id, one id per key: prefer ids not flagged as fallback, then the lowest id (deterministic)."""
    best: dict[bytes | str, tuple[bool, int]] = {}
    for key, i, is_fallback in items:
        rank = (is_fallback, i)
        if key not in best or rank < best[key]:
            best[key] = rank
    return {key: i for key, (_, i) in best.items()}


def _ordinary_index(tokenizer) -> dict[bytes, int]:
    scheme = token_scheme(tokenizer)
    added = added_token_ids(tokenizer)
    items = (
        (normalize_token(tok, scheme), i, bool(_BYTE_FALLBACK.match(tok)))
        for tok, i in tokenizer.get_vocab().items()
        if i not in added
    )
    return _unique_by_key(items)


def _added_index(tokenizer) -> dict[str, int]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return _unique_by_key((str(tok), i, False) for i, tok in decoder.items())


@dataclass(frozen=True)
class VocabMap:
    """One-to-one pairs of token ids: ``student_ids[k]`` and ``teacher_ids[k]`` stand for the same text.

    ``student_ids``/``teacher_ids``: ``(K,)`` int64, sorted by student id. ``student_size``/``teacher_size``: the
    tokenizers' lengths (logits may be wider, e.g. padded embedding tables; extra columns are simply unmatched).
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_size: int
    teacher_size: int

    def __post_init__(self) -> None:
        if self.student_ids.shape != self.teacher_ids.shape or self.student_ids.dim() != 1:
            raise ValueError(
                f"student_ids {tuple(self.student_ids.shape)} and teacher_ids {tuple(self.teacher_ids.shape)} must be "
                "1-D and of the same length"
            )
        for name, ids in (("student_ids", self.student_ids), ("teacher_ids", self.teacher_ids)):
            if len(set(ids.tolist())) != ids.numel():
                raise ValueError(f"{name} repeats an id; a vocabulary map must be one-to-one")

    def __len__(self) -> int:
        return int(self.student_ids.numel())

    @classmethod
    def identity(cls, size: int) -> VocabMap:
        ids = torch.arange(size, dtype=torch.long)
        return cls(ids, ids.clone(), size, size)

    def to(self, device: torch.device | str) -> VocabMap:
        return VocabMap(self.student_ids.to(device), self.teacher_ids.to(device), self.student_size, self.teacher_size)

    def student_to_teacher(self) -> dict[int, int]:
        return dict(zip(self.student_ids.tolist(), self.teacher_ids.tolist()))

    def teacher_id_table(self, width: int) -> torch.Tensor:
        """``(width,)`` int64 on the map's device: the teacher id of each student id, -1 where unmatched (``width``:
        the student's logit columns, which may exceed its tokenizer)."""
        table = torch.full((width,), -1, dtype=torch.long, device=self.student_ids.device)
        keep = self.student_ids < width
        table[self.student_ids[keep]] = self.teacher_ids[keep]
        return table

    def student_coverage(self) -> float:
        """Share of the student's vocabulary that has a teacher counterpart."""
        return len(self) / max(self.student_size, 1)

    def teacher_coverage(self) -> float:
        return len(self) / max(self.teacher_size, 1)


def build_exact_map(
    student_tokenizer, teacher_tokenizer, *, special_pairs: Iterable[tuple[int, int]] | None = None
) -> VocabMap:
    """The exact-match map between two tokenizers' vocabularies (see the module docstring).

    Args:
        special_pairs: ``(student id, teacher id)`` pairs forced into the map, replacing whatever either id was
            matched to. ``None`` pairs the two EOS tokens when both tokenizers have one; ``[]`` forces nothing.
    Returns:
        a :class:`VocabMap`.
    """
    student_index, teacher_index = _ordinary_index(student_tokenizer), _ordinary_index(teacher_tokenizer)
    pairs = {student_index[key]: teacher_index[key] for key in student_index.keys() & teacher_index.keys()}
    student_added, teacher_added = _added_index(student_tokenizer), _added_index(teacher_tokenizer)
    pairs.update({student_added[key]: teacher_added[key] for key in student_added.keys() & teacher_added.keys()})

    if special_pairs is None:
        s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
        special_pairs = [(s_eos, t_eos)] if s_eos is not None and t_eos is not None else []
    for s_id, t_id in special_pairs:
        s_id, t_id = int(s_id), int(t_id)
        if not 0 <= s_id < len(student_tokenizer) or not 0 <= t_id < len(teacher_tokenizer):
            raise ValueError(
                f"special_pairs entry ({s_id}, {t_id}) is out of range; ids must be < {len(student_tokenizer)} "
                f"(student) and < {len(teacher_tokenizer)} (teacher)"
            )
        pairs = {s: t for s, t in pairs.items() if s != s_id and t != t_id}
        pairs[s_id] = t_id

    student_ids = sorted(pairs)
    return VocabMap(
        torch.tensor(student_ids, dtype=torch.long),
        torch.tensor([pairs[s] for s in student_ids], dtype=torch.long),
        len(student_tokenizer),
        len(teacher_tokenizer),
    )
