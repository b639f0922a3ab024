"""Bad inputs are refused in one line that names the setting, before any weight is read; nothing ends with exit 0 and
a wrong result (NaN teachers, damaged stores, mixed runs, settings accepted and ignored)."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
import yaml
from conftest import make_char_tokenizer, tiny_bert_classifier, tiny_llama
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from llm_distill.cli import main


@pytest.fixture
def files(tmp_path):
    """A tiny saved Llama teacher (char tokenizer), a text file, and the base recipe that trains from them."""
    tokenizer = make_char_tokenizer()
    teacher = tiny_llama(len(tokenizer), layers=4, hidden=32, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox jumps over {i % 7} dogs." for i in range(24)))
    base = {
        "output_dir": str(tmp_path / "run"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "student": {"from_teacher": {"num_layers": 2}},
        "dataset": {"path": str(text), "max_length": 24, "packing": False},
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "logging_steps": 1,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "learning_rate": 1e-2,
    }
    return tmp_path, base


def write_recipe(tmp_path, recipe: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def merged(base: dict, change: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in change.items():
        target, *parents = out, *key.split(".")[:-1]
        for p in parents:
            target = target.setdefault(p, {})
        leaf = key.split(".")[-1]
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return out


DELETE = object()


@pytest.fixture
def weight_loads(monkeypatch):
    """Counts calls that read model weights (``from_pretrained`` of any model class)."""
    calls = []
    original = PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return calls


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# (recipe change, extra flags, text the one-line error must hold). "{tmp}" is the test's folder.
CASES = {
    "temperature is text": ({"temperature": "two"}, [], "temperature='two' is not accepted; expected float"),
    "misspelt key": ({"temprature": 2.0}, [], "unknown key 'temprature'.*did you mean 'temperature'"),
    "typo in from_teacher": (
        {"student.from_teacher.num_layer": 2},
        [],
        "unknown key 'num_layer' in student.from_teacher; did you mean 'num_layers'",
    ),
    "typo in peft": ({"student.peft": {"rank": 4}}, [], "unknown key 'rank' in student.peft"),
    "typo in cache": ({"cache": {"k": 4, "shards": 2}}, [], "unknown key 'shards' in cache"),
    "bool as int": ({"student.from_teacher.num_layers": True}, [], "student.from_teacher.num_layers=True"),
    "missing dataset": ({"dataset.path": "{tmp}/nope.jsonl"}, [], "dataset.path='.*nope.jsonl' does not exist"),
    "empty jsonl": ({"dataset.path": "{tmp}/empty.jsonl"}, [], "dataset.path='.*empty.jsonl' is an empty file"),
    "wrong column": (
        {"dataset.path": "{tmp}/rows.jsonl", "dataset.text_column": "body"},
        [],
        "dataset.text_column='body' is not a column of dataset .*; its columns are \\['text'\\]",
    ),
    "unknown data kind": ({"dataset.task": "chat"}, [], "dataset.task='chat' is not known"),
    "missing teacher": (
        {"teacher_model_name_or_path": "{tmp}/no-teacher"},
        [],
        "teacher_model_name_or_path='.*no-teacher' does not exist",
    ),
    "no teacher at all": ({"teacher_model_name_or_path": DELETE}, [], "no teacher"),
    "layer map out of range": (
        {"hidden_weight": 1.0, "layer_map": [[1, 9]]},
        [],
        "teacher layer 9 is out of range; valid teacher layers are 0..4",
    ),
    "hidden not divisible by heads": (
        {"student.from_teacher.hidden_size": 30},
        [],
        "hidden_size=30 is not divisible by num_attention_heads=4",
    ),
    "fp16 on a CPU": ({"fp16": True}, [], "fp16=True needs a CUDA GPU"),
    "unknown config override": (
        {"student.config_overrides": {"dropout_of_doom": 0.1}},
        [],
        "student.config_overrides.dropout_of_doom=0.1 is not accepted",
    ),
    "zero steps": ({"max_steps": 0}, [], "max_steps=0 .* trains for zero steps"),
    "misspelt LoRA target beside a real one": (
        {"student.peft": {"r": 4, "target_modules": ["q_proj", "v_prj"]}},
        [],
        "student.peft.target_modules entry 'v_prj' matches no module",
    ),
    "rows longer than the positions": (
        {"dataset.max_length": 300, "dataset.packing": True},
        [],
        "dataset.max_length=300 is longer than the student's max_position_embeddings=256",
    ),
    "checkpoint and from_teacher": (
        {"student.model_name_or_path": "{tmp}/teacher"},
        [],
        "student.model_name_or_path=.* and student.from_teacher are both set",
    ),
    "loss_chunk_size text": ({"loss_chunk_size": "big"}, [], "loss_chunk_size='big' is not accepted"),
    "negative weight": ({"ce_weight": -1}, [], "ce_weight=-1 is not accepted"),
    "store that does not exist": ({"teacher_logits_path": "{tmp}/no-store"}, [], "manifest.json not found"),
    "fused loss asked for with LoRA on the head": (
        {
            "student.peft": {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
            "loss_chunk_size": 64,
        },
        [],
        "loss_chunk_size=64 asks for the fused loss, which applies the lm_head weight itself",
    ),
}


@pytest.mark.parametrize("verb", ["train", "check"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_in_one_line_before_any_weight_is_read(files, capsys, weight_loads, case, verb):
    tmp_path, base = files
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(8)))
    change, flags, message = CASES[case]
    change = {k: (v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in change.items()}
    code, err = run_cli([verb, write_recipe(tmp_path, merged(base, change)), *flags], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert weight_loads == [], f"weights were read before the refusal: {weight_loads}"
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")


def test_debug_shows_the_traceback(files, capsys):
    tmp_path, base = files
    path = write_recipe(tmp_path, merged(base, {"temperature": "two"}))
    with pytest.raises(ValueError, match="temperature='two'"):
        main(["train", path, "--debug"])


def test_invalid_yaml_and_missing_recipe_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("temperature: [1, 2\n")
    code, err = run_cli(["check", str(bad)], capsys)
    assert code == 2 and "is not valid YAML" in err
    code, err = run_cli(["train", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "missing.yaml' does not exist" in err


@pytest.mark.parametrize("verb", ["train", "finetune", "cache-logits", "check", "eval", "report", "fetch-teacher"])
def test_every_verb_answers_help(verb, capsys):
    try:
        code = main([verb, "--help"])
    except SystemExit as done:  # argparse's own --help exits 0
        code = done.code
    assert code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_report_to_none_passes_through_as_transformers_takes_it(files, capsys):
    tmp_path, base = files
    path = write_recipe(tmp_path, base)
    assert main(["train", path, "--report_to", "none", "--max_steps", "1"]) == 0


def test_a_nan_teacher_stops_training_before_anything_is_written(files, capsys):
    tmp_path, base = files
    weights = load_file(tmp_path / "teacher" / "model.safetensors")
    name = next(k for k in weights if "layers.1.mlp.up_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, tmp_path / "teacher" / "model.safetensors", metadata={"format": "pt"})
    recipe = write_recipe(tmp_path, merged(base, {"save_strategy": "steps", "save_steps": 1}))
    code, err = run_cli(["train", recipe], capsys)
    assert code == 2 and "step 1: the teacher's" in err and "NaN or inf" in err, err
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not any(p.name.startswith("checkpoint") for p in run.iterdir())
    # cache-logits refuses to write non-finite targets: no shard, no manifest.
    code, err = run_cli(
        ["cache-logits", recipe, "--cache.output_dir", str(tmp_path / "store"), "--cache.k", "4"], capsys
    )
    assert code == 2 and "NaN or inf" in err, err
    assert not list((tmp_path / "store").glob("shard-*")) and not (tmp_path / "store" / "manifest.json").exists()


def test_a_store_holding_nan_stops_training(files, capsys):
    tmp_path, base = files
    store = tmp_path / "store"
    cached = merged(base, {"cache": {"output_dir": str(store), "k": 8, "dtype": "float32"}})
    recipe = write_recipe(tmp_path, cached)
    assert main(["cache-logits", recipe]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    shard = store / manifest["shards"][0]["file"]
    tensors = load_file(shard)
    tensors["logprobs"][:, 0] = float("nan")  # as a writer without the finite check would have stored it
    save_file(tensors, shard)
    data = shard.read_bytes()
    manifest["shards"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_cli(["train", recipe, "--teacher_logits_path", str(store)], capsys)
    assert code == 2 and "the teacher's cached log-probabilities hold NaN or inf" in err, err


def test_a_damaged_shard_is_found_at_open_and_cache_logits_repairs_it(files, capsys, tmp_path):
    _, base = files
    store = tmp_path / "store"
    recipe = write_recipe(tmp_path, merged(base, {"cache": {"output_dir": str(store), "k": 8, "shard_size": 8}}))
    assert main(["cache-logits", recipe]) == 0
    shards = sorted(store.glob("shard-*.safetensors"))
    assert len(shards) >= 2
    original = {p.name: p.read_bytes() for p in shards}
    damaged = bytearray(original[shards[1].name])
    damaged[-5] ^= 0xFF
    shards[1].write_bytes(bytes(damaged))
    code, err = run_cli(["train", recipe, "--teacher_logits_path", str(store)], capsys)
    assert code == 2 and "fails its checksum" in err and "re-run `llm-distill cache-logits`" in err, err
    assert main(["cache-logits", recipe]) == 0  # the advice works: the damaged shard is rewritten
    repaired = {p.name: p.read_bytes() for p in sorted(store.glob("shard-*.safetensors"))}
    assert repaired == original
    assert main(["train", recipe, "--teacher_logits_path", str(store)]) == 0


def test_manifest_entries_are_confined_to_the_store(files, capsys, tmp_path):
    _, base = files
    store = tmp_path / "store"
    recipe = write_recipe(tmp_path, merged(base, {"cache": {"output_dir": str(store), "k": 8}}))
    assert main(["cache-logits", recipe]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../../etc/passwd"
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_cli(["train", recipe, "--teacher_logits_path", str(store)], capsys)
    assert code == 2 and "'../../etc/passwd', which is not a shard name inside the store" in err, err


def test_the_teacher_is_identified_by_its_weight_files_not_its_path(files, capsys, tmp_path, monkeypatch):
    _, base = files
    store = tmp_path / "store"
    recipe = write_recipe(tmp_path, merged(base, {"cache": {"output_dir": str(store), "k": 8}}))
    assert main(["cache-logits", recipe]) == 0
    monkeypatch.chdir(tmp_path)  # the same teacher named by a relative path is the same teacher
    assert main(["train", recipe, "--teacher_logits_path", str(store), "--teacher_model_name_or_path", "teacher"]) == 0
    retrained = tiny_llama(len(make_char_tokenizer()), layers=4, hidden=32, seed=5)
    retrained.save_pretrained(tmp_path / "teacher")  # fine-tuned again, in place
    code, err = run_cli(
        ["train", recipe, "--teacher_logits_path", str(store), "--output_dir", str(tmp_path / "run2")], capsys
    )
    assert code == 2 and "teacher_files_hash" in err and "weight files changed" in err, err


def test_a_padded_vocabulary_teacher_is_cached_and_trained_like_the_live_path(files, capsys, tmp_path):
    _, base = files
    tokenizer = make_char_tokenizer()
    padded = tiny_llama(len(tokenizer) + 9, layers=4, hidden=32, seed=1)  # 112 rows for a 103-token tokenizer
    with torch.no_grad():
        padded.lm_head.weight[len(tokenizer) :] *= 40.0  # the padded rows would dominate a top-k
    padded.save_pretrained(tmp_path / "padded")
    tokenizer.save_pretrained(tmp_path / "padded")
    store = tmp_path / "store"
    recipe = write_recipe(
        tmp_path,
        merged(
            base, {"teacher_model_name_or_path": str(tmp_path / "padded"), "cache": {"output_dir": str(store), "k": 8}}
        ),
    )
    assert main(["cache-logits", recipe]) == 0
    assert json.loads((store / "manifest.json").read_text())["vocab_size"] == len(tokenizer)
    assert main(["train", recipe, "--teacher_logits_path", str(store)]) == 0


def test_runs_are_never_mixed(files, capsys, tmp_path):
    _, base = files
    recipe = write_recipe(tmp_path, merged(base, {"save_strategy": "steps", "save_steps": 1}))
    assert main(["train", recipe]) == 0
    model = tmp_path / "run" / "model.safetensors"
    first = model.read_bytes()
    # The same recipe again: finished, nothing to do, the model is untouched.
    assert main(["train", recipe]) == 0 and model.read_bytes() == first
    # A record written before a config field existed (an older llm_distill) still matches: that field is not compared.
    record_path = tmp_path / "run" / "llm_distill_run.json"
    record = json.loads(record_path.read_text())
    del record["settings"]["config"]["lmbda"]
    record_path.write_text(json.dumps(record))
    assert main(["train", recipe]) == 0 and model.read_bytes() == first
    # Another recipe into the same folder is refused, naming what differs.
    code, err = run_cli(["train", recipe, "--learning_rate", "0.5"], capsys)
    assert code == 2 and "holds a run of another recipe (config.learning_rate: 0.01 -> 0.5)" in err, err
    assert model.read_bytes() == first
    # ... unless asked for: the old checkpoints go, a new run is trained.
    assert main(["train", recipe, "--learning_rate", "0.5", "--overwrite_output_dir", "true"]) == 0
    assert model.read_bytes() != first
    # A folder with a model but no record of the run that wrote it cannot be resumed or kept safely.
    (tmp_path / "run" / "llm_distill_run.json").unlink()
    code, err = run_cli(["train", recipe], capsys)
    assert code == 2 and "no llm_distill run record" in err, err


def test_the_seed_is_set_before_a_random_student_is_built(files, tmp_path):
    _, base = files
    recipe = merged(base, {"student.from_teacher.layer_init": None, "max_steps": 1})
    weights = []
    for i, rng in enumerate((1, 2)):
        torch.manual_seed(rng)  # whatever the global generator held before the run
        path = write_recipe(tmp_path, merged(recipe, {"output_dir": str(tmp_path / f"r{i}")}), f"r{i}.yaml")
        assert main(["train", path]) == 0
        weights.append(load_file(tmp_path / f"r{i}" / "model.safetensors"))
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_eval_refuses_a_model_without_a_tokenizer(tmp_path, capsys):
    model = tiny_bert_classifier(vocab_size=len(make_char_tokenizer()))
    model.save_pretrained(tmp_path / "m")
    data = tmp_path / "v.jsonl"
    data.write_text("\n".join(json.dumps({"sentence": "a b", "label": i % 2}) for i in range(4)))
    code, err = run_cli(["eval", "classification", "--model", str(tmp_path / "m"), "--dataset", str(data)], capsys)
    assert code == 2 and "--model=" in err and "tokenizer" in err, err


def test_a_set_with_nothing_to_count_is_refused(files, capsys):
    tmp_path, base = files
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": "x" * 40, "response": "y"}) for _ in range(6)))
    change = {"dataset.path": str(prompts), "dataset.task": "instruction"}
    code, err = run_cli(["check", write_recipe(tmp_path, merged(base, change))], capsys)
    assert code == 2 and "no training rows with a counted token" in err, err
