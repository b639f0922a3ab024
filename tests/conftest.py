"""Tiny models and a tiny tokenizer built from configs: no downloads, seconds per test."""

from __future__ import annotations

import os
import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: enough real tokenization to exercise padding, masking and prompts."""
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def make_swapped_char_tokenizer(a: str = "a", b: str = "b") -> PreTrainedTokenizerFast:
    """The char tokenizer with the ids of two tokens swapped: same size, the silent kind of mismatch."""
    tok = make_char_tokenizer()
    vocab = dict(tok.get_vocab())
    tok.backend_tokenizer.model = type(tok.backend_tokenizer.model)(
        vocab={**vocab, a: vocab[b], b: vocab[a]}, unk_token="[UNK]"
    )
    return tok


@pytest.fixture
def char_tokenizer() -> PreTrainedTokenizerFast:
    return make_char_tokenizer()


def tiny_llama(
    vocab_size: int = 128, layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0, **overrides
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        **{
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 256,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
            **overrides,
        },
    )
    return LlamaForCausalLM(config)


def tiny_bert_classifier(
    vocab_size: int = 128,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    seed: int = 0,
    num_labels: int = 2,
    **overrides,
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_labels=num_labels,
        **{"max_position_embeddings": 256, **overrides},
    )
    return BertForSequenceClassification(config)


@pytest.fixture
def llama_pair(char_tokenizer):
    vocab = len(char_tokenizer)
    return tiny_llama(vocab, layers=4, hidden=48, heads=4, seed=1), tiny_llama(vocab, layers=2, hidden=32, seed=2)


def save_config_only_model(path, task: str, tokenizer=None, **overrides) -> str:
    """A model folder with config.json and a tokenizer but no weights: all that pre-flight (`check`) may read.

    ``task``: ``"sequence_classification"`` (a 6-layer BERT shaped like MiniLM) or ``"causal_lm"`` (a 30-layer Llama
    shaped like SmolLM2).
    """
    tokenizer = tokenizer or make_char_tokenizer()
    # The real teachers' widths and head layouts (MiniLM: 384 wide, 12 heads; SmolLM2: 576 wide, 9 query and 3
    # key/value heads), which recipes' relation heads and layer maps are written for; no weights are made.
    if task == "sequence_classification":
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                            num_attention_heads=12, num_labels=2, max_position_embeddings=512)  # fmt: skip
        config.architectures = ["BertForSequenceClassification"]
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)  # fmt: skip
        config.architectures = ["LlamaForCausalLM"]
    for key, value in overrides.items():
        setattr(config, key, value)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_bert_tokenizer(vocab: list[str]):
    """A BERT WordPiece tokenizer over ``vocab``. (transformers 5 builds one of the special tokens alone from
    ``vocab_file=``; the vocabulary must be given as a dict.)"""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
