"""Give a model built from the teacher's layers a new tokenizer (a tokenizer transplant).

The model's embedding table (and its output head, when untied) is indexed by the teacher's vocabulary. The new
table has one row per token of the new (student) tokenizer:

- a token with an exact counterpart in the teacher's vocabulary (same bytes of text, or a paired special such as
  the two EOS tokens; ``exact_map.build_exact_map``) gets that teacher row, copied exactly;
- any other token gets the mean of the teacher rows of its *teacher tokenization*: its text tokenized by the
  teacher tokenizer (a byte-level token holding part of a UTF-8 character goes through the teacher's BPE model on
  its bytes when the teacher is byte-level too);
- a token with no teacher tokenization (an unpaired special token, a byte sequence the teacher cannot write) gets
  the mean of all teacher rows.

The same rule fills an untied head from the teacher's head rows. Mean-of-pieces is the initialisation of Fast
Vocabulary Transfer (Gee et al. 2022); the layers are unchanged, so copied rows keep their meaning for them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from .exact_map import VocabMap, added_token_ids, build_exact_map, byte_alphabet, token_bytes, token_scheme

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransplantReport:
    """How the new tokenizer's rows were filled: ``copied + mean_initialised + fallback == vocab_size``."""

    vocab_size: int
    copied: int
    mean_initialised: int
    fallback: int
    untied_head: bool

    @property
    def copied_share(self) -> float:
        return self.copied / max(self.vocab_size, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "copied_share": self.copied_share}


def _bytes_to_teacher_ids(teacher_tokenizer, data: bytes, scheme: str) -> list[int]:
    """Teacher ids for bytes that are not valid UTF-8 (part of a character): only a byte-aware teacher can write
    them (byte-level BPE through its model on the byte alphabet, or SentencePiece byte-fallback pieces)."""
    if scheme == "byte_level":
        alphabet = byte_alphabet()
        return [t.id for t in teacher_tokenizer.backend_tokenizer.model.tokenize("".join(alphabet[b] for b in data))]
    if scheme == "metaspace":
        ids = [teacher_tokenizer.convert_tokens_to_ids(f"<0x{b:02X}>") for b in data]
        if all(i is not None and i != teacher_tokenizer.unk_token_id for i in ids):
            return ids
    return []


def teacher_tokenization(student_tokenizer, teacher_tokenizer) -> dict[int, list[int]]:
    """For every ordinary student token id: the teacher ids that write the same text (possibly empty; the teacher's
    unknown token is left out)."""
    student_bytes = token_bytes(student_tokenizer)
    scheme = token_scheme(teacher_tokenizer)
    decodable: dict[int, str] = {}
    pieces: dict[int, list[int]] = {}
    for i, data in student_bytes.items():
        try:
            decodable[i] = data.decode("utf-8")
        except UnicodeDecodeError:
            pieces[i] = _bytes_to_teacher_ids(teacher_tokenizer, data, scheme)
    ids = list(decodable)
    if ids:
        encoded = teacher_tokenizer([decodable[i] for i in ids], add_special_tokens=False)["input_ids"]
        pieces.update({i: list(e) for i, e in zip(ids, encoded)})
    # An unknown-token piece says nothing about the text it replaced: leave it out of the mean.
    unk = teacher_tokenizer.unk_token_id
    return {i: [t for t in ids if t != unk] for i, ids in pieces.items()}


def transplant_tokenizer(
    model, student_tokenizer, teacher_tokenizer, *, vocab_map: VocabMap | None = None
) -> TransplantReport:
    """Replace ``model``'s teacher-indexed embeddings (and untied head) by rows for ``student_tokenizer``, in place.

    Args:
        model: a ``PreTrainedModel`` whose input embeddings (and untied head) hold the teacher's rows, e.g. from
            ``llm_distill.student.student_from_teacher``.
        vocab_map: the exact map to copy through; default ``build_exact_map(student_tokenizer, teacher_tokenizer)``.
    Returns:
        a :class:`TransplantReport`. The model's config gets the new ``vocab_size`` and the student tokenizer's
        BOS/EOS/PAD ids; tied embeddings stay tied.
    """
    embeddings = model.get_input_embeddings()
    teacher_rows = embeddings.weight.shape[0]
    if teacher_rows < len(teacher_tokenizer):
        raise ValueError(
            f"the model's embedding table has {teacher_rows} rows but the teacher tokenizer has "
            f"{len(teacher_tokenizer)} tokens; transplant_tokenizer needs a model indexed by the teacher's vocabulary"
        )
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != embeddings.weight.data_ptr()
    if untied and getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: an output head with a bias is not supported by the transplant")
    vocab_map = vocab_map if vocab_map is not None else build_exact_map(student_tokenizer, teacher_tokenizer)
    size = len(student_tokenizer)

    copy = {s: t for s, t in vocab_map.student_to_teacher().items() if s < size and t < teacher_rows}
    pieces = teacher_tokenization(student_tokenizer, teacher_tokenizer)
    added = added_token_ids(student_tokenizer)
    # Each new row is sum_k weight_k * old[src_k] over its entries (dst_k == row): one entry of weight 1 for a
    # copied row, n entries of weight 1/n for the mean of n pieces.
    dst: list[int] = []
    src: list[int] = []
    weight: list[float] = []
    fallback: list[int] = []
    for i in range(size):
        ids = [copy[i]] if i in copy else [t for t in pieces.get(i, []) if t < teacher_rows] if i not in added else []
        if not ids:
            fallback.append(i)
            continue
        dst.extend([i] * len(ids))
        src.extend(ids)
        weight.extend([1.0 / len(ids)] * len(ids))
    dst_t, src_t = torch.tensor(dst, dtype=torch.long), torch.tensor(src, dtype=torch.long)
    weight_t = torch.tensor(weight, dtype=torch.float32).unsqueeze(1)

    def new_table(old: torch.Tensor) -> torch.Tensor:
        old = old.detach().float().cpu()
        table = torch.zeros(size, old.shape[1])
        table.index_add_(0, dst_t, old[src_t] * weight_t)
        if fallback:
            table[torch.tensor(fallback, dtype=torch.long)] = old[: len(teacher_tokenizer)].mean(0)
        return table

    new_in = new_table(embeddings.weight)
    new_out = new_table(head.weight) if untied else None
    # Copied rows must be bit-exact: index_add_ of one row with weight 1.0 into zeros is exact in fp32, and the cast
    # back to the model's dtype is the identity on values that came from that dtype.
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        weight_in = model.get_input_embeddings().weight
        weight_in.copy_(new_in.to(weight_in.dtype))
        if untied:
            weight_out = model.get_output_embeddings().weight
            weight_out.copy_(new_out.to(weight_out.dtype))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(student_tokenizer, name)
        setattr(model.config, name, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, value)
    mean_initialised = len({d for d in dst if d not in copy})
    report = TransplantReport(size, len(copy), mean_initialised, len(fallback), untied)
    logger.info(
        "tokenizer transplant: %d tokens, %d copied (%.1f %%), %d mean-initialised, %d from the mean of all rows",
        size,
        report.copied,
        100 * report.copied_share,
        report.mean_initialised,
        report.fallback,
    )
    return report
