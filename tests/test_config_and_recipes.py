"""Config validation and recipe parsing: bad values fail at construction, naming field, value and fix."""

import glob
import json
import os

import pytest
import yaml
from conftest import save_config_only_model

from llm_distill import DistillationConfig
from llm_distill.cli import main
from llm_distill.data import DataConfig
from llm_distill.recipes import load_recipe, parse_overrides

ROOT = os.path.join(os.path.dirname(__file__), "..")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"jsd_beta": 1.5}, "jsd_beta=1.5"),
        ({"kd_loss": "kl_div"}, "kd_loss='kl_div'.*forward_kl"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "all loss weights are 0"),
        ({"ce_weight": -0.1}, "ce_weight=-0.1"),
        ({"teacher_dtype": "fp8"}, "teacher_dtype='fp8'"),
        ({"task": "seq2seq"}, "task='seq2seq'"),
        ({"teacher_logits_path": "store", "hidden_weight": 1.0}, "teacher_logits_path"),
    ],
)
def test_impossible_config_values_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig(output_dir=str(tmp_path), **kwargs)


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_every_shipped_recipe_passes_preflight(path, monkeypatch, tmp_path, capsys):
    """Every shipped recipe parses against the real schema and passes `check` (the whole pre-flight) with its model
    folders replaced by config-only stand-ins of the same family and depth (CI has no real weights)."""
    monkeypatch.chdir(ROOT)
    with open(path) as fh:
        first = fh.readline()
    assert first.startswith("#"), "a recipe starts with a comment giving the command that runs it"
    assert "llm-distill" in open(path).read().split("\n\n")[0] or "accelerate launch" in open(path).read()
    recipe = load_recipe(path)
    args = recipe.training_args()
    assert isinstance(args, DistillationConfig)
    data = DataConfig.from_dict(recipe.dataset)
    task = "sequence_classification" if data.task == "classification" else "causal_lm"
    fake = save_config_only_model(tmp_path / "model", task)
    flags = ["--output_dir", str(tmp_path / "run")]
    if args.teacher_model_name_or_path:
        flags += ["--teacher_model_name_or_path", fake]
    if args.teachers:
        stand_ins = [{"path": fake, "name": t["name"], "weight": t["weight"]} for t in args.teachers]
        flags += ["--teachers", json.dumps(stand_ins)]
    if recipe.student.get("model_name_or_path"):
        flags += ["--student.model_name_or_path", fake]
    if (recipe.student.get("from_teacher") or {}).get("init_from"):
        flags += ["--student.from_teacher.init_from", fake]
    if args.teacher_logits_path:
        # Pre-flight opens the store: without one it is refused, naming the setting; as a live run it passes.
        assert main(["check", path, *flags, "--teacher_logits_path", str(tmp_path / "no-store")]) == 2
        assert "teacher_logits_path" in capsys.readouterr().err
        flags += ["--teacher_logits_path", "null"]
    verb = "finetune" if "llm-distill finetune " + os.path.relpath(path, ROOT) in open(path).read() else "train"
    assert main(["check", path, *flags, "--for", verb]) == 0, capsys.readouterr().err


def test_unknown_keys_are_rejected_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"output_dir": "x", "temprature": 2.0}))
    with pytest.raises(ValueError, match="unknown key 'temprature'.*did you mean 'temperature'"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"output_dir": "x", "dataset": {"path": "a.txt", "max_len": 3}}))
    with pytest.raises(ValueError, match="'max_len' in dataset.*max_length"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"output_dir": "x", "student": {"from_teacher": {}, "lora": {}}}))
    with pytest.raises(ValueError, match="'lora' in student"):
        load_recipe(bad)


def test_cli_overrides_win_over_yaml(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": "x", "temperature": 1.0, "dataset": {"path": "a.txt"}}))
    loaded = load_recipe(recipe, ["--temperature", "3", "--dataset.max_length=64", "--kd_loss", "jsd"])
    args = loaded.training_args()
    assert args.temperature == 3.0 and args.kd_loss == "jsd"
    assert loaded.dataset == {"path": "a.txt", "max_length": 64}


def test_override_parsing_types():
    parsed = parse_overrides(
        ["--a", "1", "--b=1e-4", "--c", "true", "--d", "null", "--e", "[[1, 2]]", "--f", "--eval_strategy", "no"]
        + ["--report_to", "none"]
    )
    assert parsed == {
        "a": 1,
        "b": 1e-4,
        "c": True,
        "d": None,
        "e": [[1, 2]],
        "f": True,
        "eval_strategy": "no",
        "report_to": "none",  # as transformers takes it: no integration (YAML's null is the way to say None)
    }


def test_teacher_block_maps_to_config_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": "x", "teacher": {"model_name_or_path": "t", "dtype": "bfloat16"}}))
    args = load_recipe(recipe).training_args()
    assert args.teacher_model_name_or_path == "t" and args.teacher_dtype == "bfloat16"
