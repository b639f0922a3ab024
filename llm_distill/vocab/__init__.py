"""How the teacher's and the student's tokenizers relate.

- ``compat``: one shared tokenizer: identical token ids, padded vocabulary tails reconciled by the real token count.
- ``align``: tokenize the same raw text for a student and a teacher with different tokenizers and pair the
  positions where both predict the next token after the same text (``align_batch``).
- ``exact_map``: tokens of the two vocabularies that stand for the same bytes of text (``build_exact_map``).
- ``transplant``: give a model built from the teacher's layers the student's tokenizer (``transplant_tokenizer``).

The losses that compare the two vocabularies' distributions are in ``llm_distill.losses.cross_vocab``.
"""

from .align import (
    AlignedBatch,
    AlignExample,
    SideText,
    TokenGroup,
    align_batch,
    chat_example,
    gather_positions,
    prompt_example,
    text_example,
)
from .compat import check_tokenizers, same_vocabulary, shared_vocab_size
from .exact_map import VocabMap, build_exact_map, normalize_token, token_bytes, token_scheme
from .transplant import TransplantReport, teacher_tokenization, transplant_tokenizer

__all__ = [
    "AlignExample",
    "AlignedBatch",
    "SideText",
    "TokenGroup",
    "TransplantReport",
    "VocabMap",
    "align_batch",
    "check_tokenizers",
    "build_exact_map",
    "chat_example",
    "gather_positions",
    "normalize_token",
    "prompt_example",
    "same_vocabulary",
    "shared_vocab_size",
    "teacher_tokenization",
    "text_example",
    "token_bytes",
    "token_scheme",
    "transplant_tokenizer",
]
