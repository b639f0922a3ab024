"""Teacher-student agreement for a causal LM student whose tokenizer is not the teacher's.

The text is cut at word boundaries into pieces of about ``chunk_chars`` characters; each piece is tokenized by both
tokenizers and paired where both predict the next token after the same characters (``vocab.align``). At each
aligned position the student's most likely token, carried through the exact vocabulary map (``vocab.exact_map``),
is compared with the teacher's. Reported: that top-1 agreement, the aligned positions and the share of the student's
predicted positions they are, and how much of the teacher's probability mass the map can carry there.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..vocab import align_batch, build_exact_map, gather_positions, text_example


def text_pieces(text: str, chunk_chars: int) -> list[str]:
    """``text`` in consecutive pieces of about ``chunk_chars`` characters, cut before a space (no text is lost)."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        pieces.append(text[start:end])
        start = end
    return [p for p in pieces if p.strip()]


@torch.no_grad()
def cross_tokenizer_agreement(
    teacher,
    teacher_tokenizer,
    student,
    student_tokenizer,
    text: str,
    *,
    max_length: int = 256,
    chunk_chars: int | None = None,
    batch_size: int = 8,
    max_positions: int | None = None,
) -> dict:
    """Top-1 agreement of ``student`` with ``teacher`` at the aligned positions of ``text`` (see the module doc).

    ``max_length`` caps each piece's tokens on either side (pairs beyond are dropped); pieces default to
    ``2 * max_length`` characters. ``max_positions`` stops after that many aligned positions.
    """
    vocab_map = build_exact_map(student_tokenizer, teacher_tokenizer)
    s_device = next(student.parameters()).device
    t_device = next(teacher.parameters()).device
    pieces = text_pieces(text, chunk_chars or 2 * max_length)
    agree = pairs = predicted = 0
    table = None
    mapped_mass = 0.0
    for start in tqdm(range(0, len(pieces), batch_size), desc="cross-tokenizer agreement", unit="batch"):
        rows = [text_example(p) for p in pieces[start : start + batch_size]]
        batch = align_batch(rows, student_tokenizer, teacher_tokenizer, max_length=max_length,
                            teacher_max_length=max_length)  # fmt: skip
        s_logits = student(**{k: v.to(s_device) for k, v in batch.student_inputs().items() if k != "labels"}).logits
        t_logits = teacher(**{k: v.to(t_device) for k, v in batch.teacher_inputs().items()}).logits
        mask = batch.pair_mask
        s_top = gather_positions(s_logits, batch.student_positions).argmax(-1).cpu()
        t_at = gather_positions(t_logits, batch.teacher_positions).float()
        if table is None:
            table = vocab_map.teacher_id_table(s_logits.shape[-1])
        agree += int(((table[s_top] == t_at.argmax(-1).cpu()) & mask).sum())
        probs = t_at.softmax(-1)[..., : len(teacher_tokenizer)].cpu()
        mapped_mass += float(probs.index_select(-1, vocab_map.teacher_ids).sum(-1)[mask].sum())
        pairs += int(mask.sum())
        predicted += int(batch.counted_positions().sum())
        if max_positions is not None and pairs >= max_positions:
            break
    if pairs == 0:
        raise ValueError("no aligned position in the text: the two tokenizations never end at the same character")
    return {
        "cross_tokenizer": True,
        "top1_agreement": agree / pairs,
        "aligned_positions": pairs,
        "aligned_share": pairs / max(predicted, 1),
        "teacher_mass_on_exact_map": mapped_mass / pairs,
        "exact_map_tokens": len(vocab_map),
    }
