"""Teacher-guided data selection: token level inside the loss, sample level as a step before training."""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import make_bert_tokenizer, tiny_bert_classifier, tiny_llama
from test_trainer import flat_params, instruction_dataset, make_args

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.selection.rows import choose_rows, select_rows
from llm_distill.selection.spec import DataSelection
from llm_distill.tasks import targets
from llm_distill.teacher.store import FingerprintMismatchError

TOKEN = {"score": "excess_loss", "level": "token"}


def llama_trainer(tmp_path, tokenizer, ds, **kw):
    teacher = tiny_llama(len(tokenizer), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(tokenizer), seed=2)
    args = make_args(tmp_path, per_device_train_batch_size=4, learning_rate=1e-2, ce_weight=0.5, **kw)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tokenizer
    )


@pytest.mark.parametrize("chunk", [0, 16])
def test_token_selection_with_keep_one_is_training_without_selection(tmp_path, char_tokenizer, chunk):
    ds = instruction_dataset(char_tokenizer, n=8)
    runs = []
    for name, extra in (("plain", {}), ("keep1", {"data_selection": {**TOKEN, "keep": 1.0}})):
        trainer = llama_trainer(tmp_path / name, char_tokenizer, ds, max_steps=2, loss_chunk_size=chunk, **extra)
        trainer.train()
        runs.append((flat_params(trainer.student), trainer.state.log_history))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        for key in ("loss", "kd_loss", "ce_loss"):
            if key in a:
                assert a[key] == b[key], key
    assert runs[1][1][0]["selection_kept_fraction"] == 1.0 and "selection_score_mean" in runs[1][1][0]


def test_with_a_fixed_teacher_score_the_kept_tokens_are_exactly_the_expected_ones(tmp_path, char_tokenizer):
    """teacher_nll (keep the lowest) at keep 0.5: the KD and CE sums run over exactly the hand-picked tokens and are
    divided by their number; the window count is known before the forward pass."""
    ds = instruction_dataset(char_tokenizer, n=4)
    trainer = llama_trainer(
        tmp_path, char_tokenizer, ds, data_selection={"score": "teacher_nll", "level": "token", "keep": 0.5}
    )
    batch = trainer.data_collator([ds[i] for i in range(4)])
    mask, labels = targets(batch, "causal_lm")
    with torch.no_grad():
        t_logits = trainer.teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll = -F.log_softmax(t_logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    expected = torch.zeros_like(mask)
    for row in range(4):
        counted = mask[row].nonzero().squeeze(-1).tolist()
        n_keep = int(len(counted) * 0.5 + 0.5)
        ranked = sorted(counted, key=lambda p: (nll[row, p].item(), p))  # lowest NLL first, ties by position
        expected[row, ranked[:n_keep]] = True
    counts = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    assert counts["kd_tokens"] == expected.sum() < mask.sum()

    student = trainer.model
    student.train()
    loss = trainer.compute_loss(student, dict(batch), num_items_in_batch=counts)
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        t = F.log_softmax(t_logits.float(), -1)
        s = F.log_softmax(s_logits, -1)
        kd = (t.exp() * (t - s)).sum(-1)[expected].sum()
        ce = F.cross_entropy(s_logits[expected], labels[expected], reduction="sum")
    assert loss.item() == pytest.approx(((kd + 0.5 * ce) / expected.sum()).item(), rel=1e-5)


def test_fused_and_dense_paths_select_the_same_tokens(tmp_path, char_tokenizer):
    ds = instruction_dataset(char_tokenizer, n=4)
    losses = []
    for chunk in (0, 8):
        trainer = llama_trainer(
            tmp_path / str(chunk), char_tokenizer, ds, loss_chunk_size=chunk, data_selection={**TOKEN, "keep": 0.6}
        )
        batch = trainer.data_collator([ds[i] for i in range(4)])
        trainer.model.train()
        counts = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
        losses.append(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=counts).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_selection_settings_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'keeep' in data_selection; did you mean 'keep'"):
        make_args(tmp_path, data_selection={**TOKEN, "keeep": 0.5})
    with pytest.raises(ValueError, match=r"data_selection.keep=0 is not accepted; it must be a fraction in \(0, 1\]"):
        make_args(tmp_path, data_selection={**TOKEN, "keep": 0})
    with pytest.raises(ValueError, match="data_selection.score='nll' is not known"):
        make_args(tmp_path, data_selection={"score": "nll", "level": "token"})
    with pytest.raises(ValueError, match="teacher_logits_path='store' .top-k. does not hold"):
        make_args(tmp_path, data_selection=TOKEN, teacher_logits_path="store")
    with pytest.raises(ValueError, match="level='token' needs a token task"):
        DistillationTrainer(
            model=tiny_bert_classifier(seed=2),
            teacher_model=tiny_bert_classifier(seed=1),
            args=make_args(tmp_path, data_selection=TOKEN),
        )


# ---- sample level ---------------------------------------------------------------------------------------------


def test_rows_are_kept_by_score_with_ties_and_empty_rows_last():
    columns = {
        "sample_id": torch.tensor([10, 11, 12, 13, 14]),
        "num_tokens": torch.tensor([3, 0, 2, 5, 4]),
        "teacher_nll": torch.tensor([2.0, float("nan"), 1.0, 1.0, 3.0]),
        "teacher_entropy": torch.tensor([0.1, float("nan"), 0.5, 0.2, 0.4]),
        "reference_nll": torch.tensor([2.5, float("nan"), 4.0, 1.5, 3.0]),
    }
    keep = lambda score, k, **kw: choose_rows(columns, DataSelection(score=score, level="sample", keep=k, **kw))  # noqa: E731
    # Kept ids come back in dataset order.
    assert keep("teacher_nll", 0.6)[0] == [10, 12, 13]  # the three lowest NLLs
    assert keep("excess_loss", 0.4)[0] == [10, 12]  # excess 0.5, -, 3.0, 0.5, 0.0: 12, then 10 (the earlier 0.5)
    assert keep("teacher_entropy", 0.2)[0] == [12]
    ids, summary = keep("teacher_nll", 1.0)
    assert ids == [10, 11, 12, 13, 14] and summary["kept_rows"] == 5 and summary["kept_token_fraction"] == 1.0
    ids, summary = keep("teacher_nll", 0.4, keep_highest=True)
    assert ids == [10, 14] and summary["threshold"] == 2.0 and summary["kept_token_fraction"] == pytest.approx(7 / 14)
    assert summary["scores_all"]["p50"] == pytest.approx(1.5) and summary["scores_kept"]["mean"] == 2.5


def sample_args(tmp_path, **selection):
    return make_args(
        tmp_path,
        teacher_model_name_or_path="tiny-teacher",
        data_selection={"score": "excess_loss", "level": "sample", "keep": 0.5, "batch_size": 3, **selection},
    )


def test_sample_scores_are_written_once_reused_and_refused_for_other_data(tmp_path, char_tokenizer, monkeypatch):
    from llm_distill.recipes import select

    ds = instruction_dataset(char_tokenizer, n=10)
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(char_tokenizer), seed=2)
    args = sample_args(tmp_path)
    kept = select.select_samples(
        args, "causal_lm", ds, char_tokenizer, max_length=64, teacher=teacher, reference=student
    )
    assert len(kept) == 5 and set(kept["sample_id"]) < set(ds["sample_id"])
    summary = json.loads((tmp_path / "out" / "data_selection.json").read_text())
    assert summary["kept_rows"] == 5 and summary["rows"] == 10 and summary["score"] == "excess_loss"

    # The scores are those of the teacher and the initial student, one mean per row over its counted tokens.
    columns = select.ensure_scores(args, "causal_lm", ds, char_tokenizer, max_length=64, reference=student)
    row = ds[3]
    batch = {k: torch.tensor([row[k]]) for k in ("input_ids", "attention_mask", "labels")}
    mask, labels = targets(batch, "causal_lm")
    for model, column in ((teacher, "teacher_nll"), (student, "reference_nll")):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        want = F.cross_entropy(logits[mask], labels[mask])
        assert columns[column][3].item() == pytest.approx(want.item(), rel=1e-5)

    # Reused: nothing is scored again.
    monkeypatch.setattr(select, "score_rows", lambda *a, **k: pytest.fail("scored again"))
    again = select.select_samples(args, "causal_lm", ds, char_tokenizer, max_length=64, reference=student)
    assert again["sample_id"] == kept["sample_id"]
    with pytest.raises(FingerprintMismatchError, match="max_length=64 but this run uses max_length=32"):
        select.ensure_scores(args, "causal_lm", ds, char_tokenizer, max_length=32, reference=student)
    with pytest.raises(FingerprintMismatchError, match="dataset_fingerprint"):
        select.ensure_scores(args, "causal_lm", ds.select(range(9)), char_tokenizer, max_length=64, reference=student)
    with pytest.raises(FingerprintMismatchError, match="reference_weights_hash"):
        other = tiny_llama(len(char_tokenizer), seed=3)
        select.ensure_scores(args, "causal_lm", ds, char_tokenizer, max_length=64, reference=other)


def test_sample_selection_with_keep_one_keeps_the_dataset_itself(tmp_path, char_tokenizer):
    from llm_distill.recipes.select import select_samples

    ds = instruction_dataset(char_tokenizer, n=6)
    args = sample_args(tmp_path, keep=1.0, score="teacher_entropy")
    teacher = tiny_llama(len(char_tokenizer), layers=3, hidden=48, seed=1)
    assert select_samples(args, "causal_lm", ds, char_tokenizer, max_length=64, teacher=teacher) is ds
    assert select_rows(ds, list(range(6))) is ds


def test_score_data_then_train_from_the_cli(tmp_path):
    """score-data writes the scores; train reuses them and trains on the kept rows only (a BERT classifier)."""
    from llm_distill.cli import main

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["good", "bad"]
    tokenizer = make_bert_tokenizer(vocab)
    teacher = tiny_bert_classifier(vocab_size=len(vocab), layers=2, hidden=32, heads=4, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    sentences = ["good", "bad", "a b c good", "bad x y", "good good", "x y z", "bad bad", "q good r", "m", "n bad"]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"sentence": s, "label": i % 2}) + "\n" for i, s in enumerate(sentences))
    )
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "teacher_model_name_or_path": str(tmp_path / "teacher"),
        "student": {"from_teacher": {"num_layers": 1}},
        "dataset": {
            "path": str(tmp_path / "train.jsonl"),
            "task": "classification",
            "text_column": "sentence",
            "max_length": 16,
        },
        "data_selection": {
            "score": "teacher_nll",
            "level": "sample",
            "keep": 0.7,
            "scores_path": str(tmp_path / "scores"),
        },
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["score-data", str(path)]) == 0
    manifest = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert manifest["rows"] == 10 and "reference_nll" not in manifest["columns"]
    assert main(["train", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "data_selection.json").read_text())
    assert summary["kept_rows"] == 7 and summary["scores_path"] == str(tmp_path / "scores")
    meta = json.loads((tmp_path / "run" / "distillation.json").read_text())
    assert meta["data_selection"]["keep"] == 0.7


def test_data_selection_is_a_recipe_block_with_overrides(tmp_path):
    from llm_distill.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "data_selection": {**TOKEN, "keep": 0.5}}))
    recipe = load_recipe(path, ["--data_selection.keep", "0.7"])
    args = recipe.training_args()
    assert isinstance(args, DistillationConfig) and args.selection == DataSelection(**TOKEN, keep=0.7)


def test_head_row_stats_with_chunk_0_takes_whole_chunks_not_one_row_at_a_time(monkeypatch):
    """loss_chunk_size 'auto' reaches the scorer as 0: it must mean the fused loss's chunk size (a per-row loop made
    token-level selection five times slower than training without it)."""
    from llm_distill.losses import selection

    torch.manual_seed(0)
    hidden, weight, labels = torch.randn(64, 16), torch.randn(100, 16), torch.randint(0, 100, (64,))
    calls = []
    linear = F.linear
    monkeypatch.setattr(selection.F, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))
    nll, _ = selection.head_row_stats(hidden, weight, None, labels, chunk_size=0)
    assert len(calls) == 1
    want, _ = selection.logit_row_stats(hidden @ weight.T, labels)
    torch.testing.assert_close(nll, want)
