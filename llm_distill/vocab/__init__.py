"""How the teacher's and the student's tokenizers relate: one shared tokenizer (``compat``: identical token ids,
padded vocabulary tails reconciled by the real token count)."""

from .compat import check_tokenizers, shared_vocab_size

__all__ = ["check_tokenizers", "shared_vocab_size"]
