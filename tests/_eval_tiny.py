"""Tiny offline models and a tiny tokenizer for the evaluation tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the film is a charming and often affecting journey .",
    "an unflinching and hilarious look at the absurdity of modern life .",
    "it 's a bad sign when you 're rooting for the villain .",
    "one long string of cliches .",
    "a gorgeous , witty , seductive movie .",
    "the story is dull and the acting is worse .",
    "Sentiment: positive negative",
    " = Homarus gammarus = ",
    "Homarus gammarus , known as the European lobster , is a species of lobster .",
]


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``CORPUS``, wrapped as a ``PreTrainedTokenizerFast``.

    Byte level means every string is encodable (no unknown tokens) and offsets map back to the exact text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab_size: int = 320, layers: int = 2, hidden: int = 32, seed: int = 0, max_positions: int = 256):
    """``conftest.tiny_llama`` in eval mode, with the BOS/EOS ids of ``tiny_tokenizer`` and an untied head."""
    import conftest

    return conftest.tiny_llama(
        vocab_size,
        layers,
        hidden,
        seed=seed,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ).eval()


def tiny_bert_classifier(vocab_size: int = 320, layers: int = 2, hidden: int = 32, seed: int = 0, num_labels: int = 2):
    import conftest

    return conftest.tiny_bert_classifier(
        vocab_size, layers, hidden, seed=seed, num_labels=num_labels, max_position_embeddings=128
    ).eval()


def save(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_sst2_like(path: Path, n: int = 12) -> str:
    """A small json-lines file with the SST-2 fields ``idx, sentence, label``."""
    import json

    rows = [{"idx": i, "sentence": CORPUS[i % 6], "label": int(i % 6 in (0, 1, 4))} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
