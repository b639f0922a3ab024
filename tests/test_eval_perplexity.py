"""Strided perplexity and bits-per-byte: window bookkeeping, closed forms and the uniform model."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from _eval_tiny import save, tiny_llama, tiny_tokenizer

from llm_distill.evaluation import perplexity as ppl
from llm_distill.evaluation.perplexity import perplexity_of, strided_nll, strided_windows, tokenize_for_scoring

TEXT = 'The European lobster is blue; only cooking turns it "lobster red". Größe: 60 cm, 6 kg — café au lait.\n'


@pytest.mark.parametrize("n,max_length,stride", [(10, 4, 2), (10, 4, 3), (5, 4, 3), (7, 8, 4), (33, 6, 1)])
def test_windows_score_each_token_once(n, max_length, stride):
    ids = torch.arange(n)
    scored = []
    for w in strided_windows(n, max_length, stride):
        batch = ppl.window_batch(ids, [w], pad_id=-1)
        assert w.end - w.begin <= max_length
        targets = batch["labels"][0, 1:]  # the causal shift drops the first position of every window
        positions = targets[targets != -100].tolist()
        scored += positions
        if w.begin > 0:  # every scored token has at least max_length - stride tokens of context in its window
            first = positions[0] - w.begin
            assert first >= max_length - stride
    assert sorted(scored) == list(range(1, n))


def test_stride_must_leave_context():
    with pytest.raises(ValueError, match="stride=4"):
        strided_windows(10, 4, 4)


class _FixedLM(torch.nn.Module):
    """Predicts the same distribution ``probs`` at every position, whatever the input."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs).log())
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_perplexity_hand_computed():
    model = _FixedLM([0.5, 0.25, 0.125, 0.125])
    ids = torch.tensor([0, 1, 2, 3, 0, 0])
    # scored: 1, 2, 3, 0, 0 -> -ln p = 2 ln2 + 3 ln2 + 3 ln2 + ln2 + ln2 = 10 ln2 over 5 tokens: perplexity 4
    for max_length, stride in [(6, 3), (3, 1), (2, 1)]:
        nll, count, _ = strided_nll(model, ids, max_length=max_length, stride=stride, batch_size=2)
        assert count == 5
        assert nll == pytest.approx(10 * math.log(2), rel=1e-6)
        assert math.exp(nll / count) == pytest.approx(4.0, rel=1e-6)


def test_single_window_equals_plain_causal_lm_loss():
    model = tiny_llama()
    ids = torch.randint(3, 300, (40,))
    nll, count, windows = strided_nll(model, ids, max_length=64, stride=32, batch_size=4)
    with torch.no_grad():
        plain = model(input_ids=ids[None], labels=ids[None]).loss.item()
    assert windows == 1 and count == 39
    assert nll / count == pytest.approx(plain, rel=1e-5)
    # Shorter windows see less context (a different number), but still score every token once.
    nll_short, count_short, _ = strided_nll(model, ids, max_length=16, stride=8, batch_size=3)
    assert count_short == 39 and nll_short != pytest.approx(nll, rel=1e-6)


def test_uniform_model_perplexity_is_vocab_size_and_bpb_matches():
    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=320)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits all 0: the uniform distribution over 320 tokens
    out = perplexity_of(model, tok, TEXT * 3, max_length=32, stride=16, batch_size=4)
    assert out["perplexity"] == pytest.approx(320.0, rel=1e-5)
    # With a BOS token every text token is scored, so the byte count is the whole UTF-8 text.
    assert out["add_bos"] and out["num_bytes"] == len((TEXT * 3).encode("utf-8")) > len(TEXT * 3)
    assert out["bits_per_byte"] == pytest.approx(out["nll_sum"] / math.log(2) / out["num_bytes"])
    assert out["bits_per_byte"] == pytest.approx(math.log2(320) * out["num_tokens"] / out["num_bytes"], rel=1e-5)


def test_bytes_without_bos_exclude_the_unscored_first_token():
    tok = tiny_tokenizer()
    ids, scored_bytes = tokenize_for_scoring(tok, TEXT, add_bos=False)
    first = tok.decode(ids[:1])
    assert scored_bytes == len(TEXT.encode("utf-8")) - len(first.encode("utf-8"))
    ids_trunc, bytes_trunc = tokenize_for_scoring(tok, TEXT, add_bos=True, max_tokens=10)
    assert len(ids_trunc) == 10 and bytes_trunc == len(tok.decode(ids_trunc[1:]).encode("utf-8"))


def test_cli_writes_json(tmp_path):
    folder = save(tiny_llama(), tiny_tokenizer(), tmp_path / "lm")
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 4, encoding="utf-8")
    out = tmp_path / "ppl.json"
    assert ppl.main(["--model", folder, "--text", str(text), "--max-length", "32", "--stride", "16",
                     "--device", "cpu", "--output", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["max_length"] == 32 and result["stride"] == 16
    assert result["perplexity"] > 1 and result["bits_per_byte"] > 0
