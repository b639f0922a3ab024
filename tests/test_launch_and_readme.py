"""Every accelerate config in launch/ parses with accelerate's own loader; every recipe the README names exists."""

import glob
import os
import re

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from llm_distill.recipes import load_recipe

ROOT = os.path.join(os.path.dirname(__file__), "..")
LAUNCH = sorted(glob.glob(os.path.join(ROOT, "launch", "*.yaml")))


@pytest.mark.parametrize("path", LAUNCH, ids=os.path.basename)
def test_launch_config_parses(path):
    config = load_config_from_file(path)
    assert config.num_processes >= 1
    text = open(path).read()
    assert "accelerate launch --config_file launch/" in text, "each launch file shows the command that uses it"


def test_launch_covers_every_strategy():
    names = {os.path.basename(p) for p in LAUNCH}
    assert {"cpu_2proc.yaml", "single_gpu.yaml", "ddp.yaml", "fsdp2.yaml", "zero2.yaml", "zero3.yaml"} <= names


def test_every_recipe_named_in_the_readme_parses(monkeypatch):
    monkeypatch.chdir(ROOT)
    readme = open("README.md").read()
    named = sorted(set(re.findall(r"configs/[\w.-]+\.yaml", readme)))
    assert named, "the README names the recipes"
    for path in named:
        assert os.path.exists(path), path
        load_recipe(path).training_args()
    for path in sorted(set(re.findall(r"launch/[\w.-]+\.yaml", readme))):
        assert os.path.exists(path), path
