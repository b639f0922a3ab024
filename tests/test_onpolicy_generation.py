"""Generation: per-row seeded samples whatever the batch, left padding, cut at EOS, current weights, eval mode."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_llama

from llm_distill.onpolicy import SamplingSettings, TransformersBackend, cut_at_eos, eos_ids_of
from llm_distill.onpolicy.generation import RowGumbelNoise

PROMPTS = ["Say hi:", "Q:", "Count to three please:", "x"]


def favour(token: int):
    """A forward hook on an lm_head that makes ``token`` the most likely next token everywhere."""

    def hook(module, args, logits):
        logits = logits.clone()
        logits[..., token] += 1e4
        return logits

    return hook


def backend_for(tokenizer, model, **kw):
    return TransformersBackend(eos_ids_of(tokenizer, model), tokenizer.pad_token_id, vocab_size=len(tokenizer), **kw)


def test_cut_at_eos_keeps_the_first_eos_and_nothing_after_it():
    assert cut_at_eos([5, 6, 3, 7, 3], [3]) == [5, 6, 3]
    assert cut_at_eos([3, 3], [3, 9]) == [3]
    assert cut_at_eos([5, 9, 1], [3, 9]) == [5, 9]
    assert cut_at_eos([5, 6], [3]) == [5, 6]  # ran out of tokens: every generated token is kept


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.3, top_k=20, top_p=0.9)])
def test_a_left_padded_batch_generates_what_each_row_generates_alone(char_tokenizer, settings):
    model = tiny_llama(len(char_tokenizer), seed=2)
    backend = backend_for(char_tokenizer, model)
    prompts = [char_tokenizer(p)["input_ids"] for p in PROMPTS]
    s = SamplingSettings(max_new_tokens=10, **settings)
    seeds = [11, 12, 13, 14]
    rng = torch.get_rng_state()
    batch = backend.generate(model, prompts, seeds, s)
    assert torch.equal(torch.get_rng_state(), rng), "generation must not draw from the global RNG"
    alone = [backend.generate(model, [p], [seed], s)[0] for p, seed in zip(prompts, seeds)]
    assert batch == alone
    reordered = backend.generate(model, prompts[::-1], seeds[::-1], s)
    assert reordered == batch[::-1]
    if not s.greedy:
        assert backend.generate(model, prompts, [21, 22, 23, 24], s) != batch, "another seed, another sample"


def test_gumbel_noise_samples_the_warped_distribution():
    torch.manual_seed(0)
    logits = torch.randn(6) * 2
    rows = 20000
    noisy = RowGumbelNoise(range(rows), "cpu")(None, logits.expand(rows, -1).clone())
    freq = torch.bincount(noisy.argmax(-1), minlength=6).float() / rows
    torch.testing.assert_close(freq, logits.softmax(-1), atol=0.012, rtol=0)


def test_top_k_1_is_greedy_and_padded_vocabulary_ids_are_never_sampled(char_tokenizer):
    model = tiny_llama(len(char_tokenizer) + 27, seed=2)  # an embedding padded past the tokenizer's vocabulary
    with torch.no_grad():
        model.lm_head.weight[len(char_tokenizer) :] = model.lm_head.weight[:27] * 50  # padded rows would win
    backend = backend_for(char_tokenizer, model)
    prompts = [char_tokenizer(p)["input_ids"] for p in PROMPTS]
    greedy = backend.generate(model, prompts, [0] * 4, SamplingSettings(max_new_tokens=8, temperature=0.0))
    top1 = backend.generate(model, prompts, [1, 2, 3, 4], SamplingSettings(max_new_tokens=8, top_k=1))
    assert greedy == top1
    sampled = backend.generate(model, prompts, [1, 2, 3, 4], SamplingSettings(max_new_tokens=8, temperature=2.0))
    assert max(max(c) for c in greedy + sampled) < len(char_tokenizer)


def test_generation_runs_in_eval_mode_with_the_current_weights_and_restores_train_mode(char_tokenizer):
    model = tiny_llama(len(char_tokenizer), seed=2, attention_dropout=0.5)
    backend = backend_for(char_tokenizer, model)
    prompts = [char_tokenizer(p)["input_ids"] for p in PROMPTS]
    greedy = SamplingSettings(max_new_tokens=8, temperature=0.0)
    model.eval()
    reference = backend.generate(model, prompts, [0] * 4, greedy)
    model.train()
    assert backend.generate(model, prompts, [0] * 4, greedy) == reference  # no dropout while generating
    assert model.training
    with torch.no_grad():  # new weights: the next call generates with them
        model.lm_head.weight.neg_()
    changed = backend.generate(model, prompts, [0] * 4, greedy)
    assert changed != reference
    assert changed == backend.generate(copy.deepcopy(model), prompts, [0] * 4, greedy)


def test_eos_stops_a_row_and_the_ids_of_eos(char_tokenizer):
    model = tiny_llama(len(char_tokenizer), seed=2)
    eos = char_tokenizer.eos_token_id
    assert eos_ids_of(char_tokenizer, model) == [eos]
    model.lm_head.register_forward_hook(favour(eos))
    backend = backend_for(char_tokenizer, model)
    out = backend.generate(model, [char_tokenizer("ab")["input_ids"]], [0], SamplingSettings(max_new_tokens=8))
    assert out == [[eos]]


def test_settings_are_checked_with_their_names():
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="generation_temperature=-1"):
        SamplingSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        SamplingSettings(max_new_tokens=0)


def test_a_student_sharded_with_fsdp2_samples_in_step_on_every_process(tmp_path):
    """Two CPU processes (gloo), the student sharded with FSDP2: one process's row stops at EOS after a token while
    the other decodes on; with synced_gpus both keep gathering weights together (no hang) and each samples exactly
    what the unsharded model samples."""
    worker = os.path.join(os.path.dirname(__file__), "fsdp_generation_worker.py")
    port = str(29600 + os.getpid() % 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, worker]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(run["sharded"] == run["unsharded"] for run in runs)
    assert len(runs[0]["sharded"][0]) == 10 and runs[1]["sharded"][0] == [3]  # 3: the char tokenizer's EOS
