"""lm-eval harness end to end: a tiny saved Llama on the shipped local task YAMLs (eval/tasks), offline."""

import json
import math
import sys

import pytest
import torch
from _eval_tiny import save, tiny_llama, tiny_tokenizer

pytest.importorskip("lm_eval")

from llm_distill.evaluation import harness  # noqa: E402
from llm_distill.evaluation.perplexity import perplexity_of  # noqa: E402

ARTICLES = [
    " = Homarus gammarus = \n \n Homarus gammarus , known as the European lobster , is a species of lobster . \n",
    " = The Film = \n \n the film is a charming and often affecting journey . \n \n = = Reception = = \n"
    " \n one long string of cliches . \n",
]
SST2 = [
    {"idx": 0, "sentence": "a gorgeous , witty , seductive movie .", "label": 1},
    {"idx": 1, "sentence": "the story is dull and the acting is worse .", "label": 0},
    {"idx": 2, "sentence": "an unflinching and hilarious look at modern life .", "label": 1},
    {"idx": 3, "sentence": "one long string of cliches .", "label": 0},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    data = root / "data"
    (data / "wikitext-2").mkdir(parents=True)
    (data / "sst2").mkdir()
    for split in ("valid", "test"):
        (data / "wikitext-2" / f"{split}.txt").write_text(" \n" + "".join(ARTICLES), encoding="utf-8")
    for split in ("train", "validation"):
        (data / "sst2" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SST2))
    model_dir = save(tiny_llama(seed=3), tiny_tokenizer(), root / "llama")
    return {"data": str(data), "model": model_dir, "root": root}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models on a shared 2-core machine: thread hand-offs cost more than they save (observed 10x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _loglik(model, tok, context: str, continuation: str) -> float:
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logp[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))


def test_local_tasks_end_to_end(setup):
    out = harness.run_harness(
        setup["model"], ["wikitext2_local", "sst2_local"], data_dir=setup["data"], include_defaults=False,
        limit=4, device="cpu",
    )  # fmt: skip
    wiki, sst2 = out["results"]["wikitext2_local"], out["results"]["sst2_local"]
    assert out["n_samples"]["wikitext2_local"]["effective"] == 2  # the two articles, regrouped from lines
    assert out["n_samples"]["sst2_local"]["effective"] == 4

    # Our own strided perplexity (BOS-prefixed, one window) scores the detokenised article exactly as lm-eval's
    # rolling loglikelihood does, so the bits per byte must agree.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(harness.LOCAL_TASKS_DIR))
    from wikitext_utils import detokenize

    model, tok = (
        AutoModelForCausalLM.from_pretrained(setup["model"]).eval(),
        AutoTokenizer.from_pretrained(setup["model"]),
    )
    nll = sum(perplexity_of(model, tok, detokenize({"page": a}), max_length=256, stride=128)["nll_sum"]
              for a in ARTICLES)  # fmt: skip
    num_bytes = sum(len(a.encode("utf-8")) for a in ARTICLES)
    assert wiki["bits_per_byte,none"] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-4)
    assert wiki["byte_perplexity,none"] == pytest.approx(2 ** wiki["bits_per_byte,none"], rel=1e-6)

    # SST-2: the likelier of " negative" / " positive" after "<sentence>\nSentiment:" is the prediction.
    preds = [
        int(_loglik(model, tok, f"{r['sentence']}\nSentiment:", " positive")
            > _loglik(model, tok, f"{r['sentence']}\nSentiment:", " negative"))
        for r in SST2
    ]  # fmt: skip
    assert sst2["acc,none"] == pytest.approx(sum(p == r["label"] for p, r in zip(preds, SST2)) / len(SST2))


def test_unknown_task_names_the_local_ones(setup):
    with pytest.raises(ValueError, match="sst2_local"):
        harness.run_harness(setup["model"], ["no_such_task"], data_dir=setup["data"], include_defaults=False)


def test_missing_data_dir_is_reported(tmp_path, monkeypatch):
    sys.path.insert(0, str(harness.LOCAL_TASKS_DIR))
    import local_data

    monkeypatch.setenv("LLM_DISTILL_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="wikitext-2/valid.txt"):
        local_data.wikitext_articles(data_files={"validation": "wikitext-2/valid.txt"})
    assert local_data.resolve_data_dir(str(tmp_path)) == tmp_path


@pytest.mark.slow
def test_cli_on_shared_data_with_default_task_index(setup, tmp_path):
    """The real ../shared/data files, found without --data-dir, and lm-eval's full task index loaded too."""
    from pathlib import Path

    sys.path.insert(0, str(harness.LOCAL_TASKS_DIR))
    import local_data

    try:
        local_data.resolve_data_dir()
    except FileNotFoundError:
        pytest.skip("no shared/data beside the repository")
    out = tmp_path / "h.json"
    argv = ["--model", setup["model"], "--tasks", "sst2_local", "wikitext2_local", "--limit", "2",
            "--max-length", "128", "--device", "cpu", "--output", str(out)]  # fmt: skip
    assert harness.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["n_samples"]["sst2_local"] == {"original": 872, "effective": 2}
    assert result["n_samples"]["wikitext2_local"]["effective"] == 2
    assert math.isfinite(result["results"]["wikitext2_local"]["bits_per_byte,none"])
    assert Path(result["model"]) == Path(setup["model"])
