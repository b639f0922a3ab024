"""Relation and score capture on the real PyPI teachers (marked slow: `make test-slow`): SmolLM2 (Llama, RoPE,
9 query / 3 key-value heads) and MiniLM (BERT)."""

import copy
import os

import pytest
import torch

from llm_distill.assets import fetch
from llm_distill.features import AttentionCapture, FeatureDistiller
from llm_distill.student import student_from_teacher

pytestmark = pytest.mark.slow
ROOT = os.path.join(os.path.dirname(__file__), "..")


def terms(fd, student, teacher, enc):
    with torch.no_grad():
        teacher(**enc)
        with fd.recording_student():
            student(**enc)
        return {k: (v[0] / v[1]).item() for k, v in fd(enc["attention_mask"]).items()}


def test_smollm2_capture_matches_eager_attention_and_gives_relations():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetch("smollm2", os.path.join(ROOT, "assets", "smollm2-135m"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    enc = tokenizer(["To be, or not to be, that is the question.", "Hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        eager = teacher(**enc).logits
    copy_of_teacher = copy.deepcopy(teacher)
    fd = FeatureDistiller.from_configs(
        teacher.config,
        teacher.config,
        hidden_map=None,
        attention_map="uniform",
        attention_on="scores",
        relation_map="uniform",
        relation_heads=12,
        causal=True,
    )
    fd.attach(copy_of_teacher, teacher)
    with torch.no_grad():
        torch.testing.assert_close(teacher(**enc).logits, eager, atol=1e-4, rtol=1e-4)
    fd.eval()
    same = terms(fd, copy_of_teacher, teacher, enc)
    assert same["attention"] < 1e-8 and same["relation"] < 1e-8
    student = student_from_teacher(teacher, num_layers=6).eval()
    fd = FeatureDistiller.from_configs(
        student.config,
        teacher.config,
        hidden_map=None,
        attention_map="uniform",
        attention_on="scores",
        relation_map="uniform",
        relation_heads=12,
        causal=True,
    )
    other_teacher = copy.deepcopy(teacher)  # the first teacher keeps the first distiller's hooks
    fd.attach(student, other_teacher)
    fd.eval()
    assert all(v > 0 for v in terms(fd, student, other_teacher, enc).values())


def test_minilm_relations_reach_a_narrower_student_without_projections():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = fetch("minilm", os.path.join(ROOT, "assets", "minilm-l6"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    student = student_from_teacher(teacher, num_layers=4, hidden_size=312, intermediate_size=1200).eval()
    fd = FeatureDistiller.from_configs(
        student.config, teacher.config, hidden_map=None, relation_map=[[4, 6]], relation_heads=12
    )
    assert len(list(fd.parameters())) == 0
    fd.attach(student, teacher)
    fd.eval()
    enc = tokenizer(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    assert terms(fd, student, teacher, enc)["relation"] > 0
    capture = AttentionCapture(teacher, [6], projections=True, scores=False, always=True)
    with torch.no_grad():
        teacher(**enc)
    assert capture.take()[6]["query"].shape == (2, enc["input_ids"].shape[1], 384)
