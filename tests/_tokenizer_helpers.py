"""Small fast tokenizers whose tokenizations are known by construction, and the GPT-2 files from ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llm_distill.vocab.exact_map import byte_alphabet

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
GPT2_DIR = os.path.join(SHARED_DATA, "tokenizers", "gpt2")
WIKITEXT_VALID = os.path.join(SHARED_DATA, "wikitext-2", "valid.txt")
SMOLLM2_DIR = "/work/assets/smollm2-135m"


def _wrap(tok: Tokenizer, *, bos: str | None, eos: str | None, specials: Sequence[str], chat_template: str | None):
    tok.add_special_tokens([s for s in (bos, eos, *specials) if s])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def byte_bpe(
    merges: Sequence[tuple[str, str]] = (),
    *,
    split_spaces: bool = False,
    bos: str | None = None,
    eos: str | None = "</s>",
    specials: Sequence[str] = (),
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the 256-byte alphabet with exactly ``merges`` (written in the byte alphabet, "Ġ" = space).

    ``split_spaces``: spaces become tokens of their own (a pre-tokenizer that isolates them), instead of GPT-2's
    leading-space words.
    """
    alphabet = byte_alphabet()
    vocab = {alphabet[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    if split_spaces:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(" ", "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok, bos=bos, eos=eos, specials=specials, chat_template=chat_template)


def word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that make ``word`` (in the byte alphabet) a single token."""
    return [(word[:k], word[k]) for k in range(1, len(word))]


def trained_byte_bpe(text: str, vocab_size: int = 400, **kwargs) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``text`` with ``tokenizers``: a real, different tokenizer in under a second."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    return _wrap(tok, bos=kwargs.get("bos"), eos=kwargs.get("eos", "</s>"), specials=(), chat_template=None)


def metaspace_tokenizer(pieces: Sequence[str], eos: str | None = "</s>") -> PreTrainedTokenizerFast:
    """A SentencePiece-style vocabulary ("▁" for spaces, "<0xNN>" byte pieces) over exactly ``pieces``."""
    vocab = {p: i for i, p in enumerate(["<unk>", *pieces])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return _wrap(tok, bos=None, eos=eos, specials=(), chat_template=None)


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """The GPT-2 tokenizer from its vocab.json + merges.txt (as ../shared/data/tokenizers/gpt2/README.md says)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(os.path.join(GPT2_DIR, "vocab.json"), os.path.join(GPT2_DIR, "merges.txt"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def wikitext_lines(count: int, min_chars: int = 40) -> list[str]:
    with open(WIKITEXT_VALID, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    # Paragraphs only: headings (" = Title = ") and blank lines are short and all alike.
    lines = [line for line in lines if len(line.strip()) >= min_chars and not line.strip().startswith("=")]
    return lines[:count]
