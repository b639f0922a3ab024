"""Classifier evaluation and teacher-student agreement on tiny saved models."""

import json

import pytest
import torch
from _eval_tiny import save, tiny_bert_classifier, tiny_llama, tiny_tokenizer, write_sst2_like

from llm_distill.evaluation import agreement, classification
from llm_distill.evaluation.metrics import classification_metrics


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models on a shared 2-core machine: thread hand-offs cost more than they save (observed 10x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def manual_forward_kl(t_logits, s_logits):
    """KL(p_T‖p_S) per row, written out: Σ p_T (log p_T − log p_S)."""
    log_p, log_q = t_logits.double().log_softmax(-1), s_logits.double().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    tok = tiny_tokenizer()
    teacher = save(tiny_bert_classifier(hidden=32, seed=0), tok, root / "teacher")
    student = save(tiny_bert_classifier(layers=1, hidden=32, seed=1), tok, root / "student")
    data = write_sst2_like(root / "sst2.jsonl", n=10)
    return {"root": root, "tok": tok, "teacher": teacher, "student": student, "data": data}


def test_evaluate_classifier_matches_manual_forward(tiny_dir):
    result = classification.evaluate_classifier(
        tiny_dir["teacher"], tiny_dir["data"], text_columns=["sentence"], batch_size=3, device="cpu"
    )
    rows = [json.loads(line) for line in open(tiny_dir["data"])]
    model, tok = classification.load_classifier(tiny_dir["teacher"], "cpu")
    with torch.no_grad():
        # One example at a time (no padding) must give the same predictions as padded batches of 3.
        preds = [model(**tok(r["sentence"], return_tensors="pt")).logits.argmax(-1).item() for r in rows]
    expected = classification_metrics(preds, [r["label"] for r in rows], num_classes=2)
    for key in ("accuracy", "f1", "f1_macro", "mcc"):
        assert result[key] == pytest.approx(expected[key])
    assert result["num_examples"] == 10 and result["num_labels"] == 2


def test_string_labels_and_bad_columns(tiny_dir):
    assert classification.label_ids(["NEGATIVE", "positive", 1, "0"], {"negative": 0, "positive": 1}) == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="neither an int"):
        classification.label_ids(["meh"], {"negative": 0})
    with pytest.raises(ValueError, match=r"\['text'\] not in the dataset"):
        classification.evaluate_classifier(tiny_dir["teacher"], tiny_dir["data"], text_columns=["text"], device="cpu")


def test_classification_cli(tiny_dir, tmp_path):
    out = tmp_path / "m.json"
    args = ["--model", tiny_dir["student"], "--dataset", tiny_dir["data"], "--text-column", "sentence",
            "--limit", "6", "--device", "cpu", "--output", str(out)]  # fmt: skip
    assert classification.main(args) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 6 and 0.0 <= result["accuracy"] <= 1.0


def test_classifier_agreement_of_identical_models_is_perfect(tiny_dir):
    out = agreement.run(tiny_dir["teacher"], [tiny_dir["teacher"], tiny_dir["student"]], dataset=tiny_dir["data"],
                        batch_size=4, device="cpu")  # fmt: skip
    same = out["students"][tiny_dir["teacher"]]
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert same["ece_teacher"] == pytest.approx(same["ece_student"])
    other = out["students"][tiny_dir["student"]]
    assert other["kl"] > 0 and other["num_counted"] == 10


def test_causal_lm_agreement_masks_and_shifts():
    teacher, student = tiny_llama(seed=0), tiny_llama(layers=1, seed=1)
    ids = torch.randint(3, 300, (30,))
    out = agreement.causal_lm_agreement(teacher, {"s": student, "t": teacher}, ids, max_length=64, stride=32)
    assert out["t"]["kl"] == pytest.approx(0.0, abs=1e-6) and out["t"]["top1_agreement"] == 1.0
    # One window holds the whole sequence: the mean KL over the 29 predicted positions of the full forward.
    with torch.no_grad():
        t_logits, s_logits = teacher(ids[None]).logits[0, :-1], student(ids[None]).logits[0, :-1]
    assert out["s"]["num_counted"] == 29
    assert out["s"]["kl"] == pytest.approx(manual_forward_kl(t_logits, s_logits).mean().item(), rel=1e-5)
    top1 = (t_logits.argmax(-1) == s_logits.argmax(-1)).float().mean().item()
    assert out["s"]["top1_agreement"] == pytest.approx(top1)
    assert out["s"]["accuracy_teacher"] == pytest.approx((t_logits.argmax(-1) == ids[1:]).float().mean().item())
