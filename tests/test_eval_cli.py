"""Every verb answers --help through the dispatcher and through its eval/ script."""

import runpy
import sys
from pathlib import Path

import pytest

from llm_distill.evaluation import VERBS, eval_main

EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"
SCRIPTS = {"classification": "classification", "perplexity": "perplexity", "harness": "harness",
           "distill": "distill", "report": "compare", "onpolicy": "onpolicy"}  # fmt: skip


@pytest.mark.parametrize("verb", list(VERBS))
def test_help_via_dispatcher_and_script(verb, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main([verb, "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage:")
    monkeypatch.setattr(sys, "argv", [f"eval/{SCRIPTS[verb]}.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EVAL_DIR / f"{SCRIPTS[verb]}.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == usage


def test_unknown_verb():
    with pytest.raises(ValueError, match="expected one of classification"):
        eval_main(["accuracy"])
