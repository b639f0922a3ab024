"""A teacher with another tokenizer in the trainer: aligned rows, the loss at aligned positions, normalisation,
refusals, and a recipe whose student gets a transplanted tokenizer."""

import json
import os

import pytest
import torch
import yaml
from _tokenizer_helpers import GPT2_DIR, trained_byte_bpe
from conftest import make_char_tokenizer, tiny_llama
from datasets import Dataset
from test_trainer import PROMPTS, RESPONSES, flat_params, make_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_distill import DistillationConfig, DistillationTrainer
from llm_distill.data import DataConfig, DistillationCollator, tokenize_instruction, with_sample_ids
from llm_distill.data.aligned import tokenize_aligned
from llm_distill.losses import exact_map_divergence, hybrid_loss, uld_loss
from llm_distill.vocab import align_batch, build_exact_map, gather_positions, prompt_example

CROSS = {"cross_tokenizer_loss": "uld"}


def student_tokenizer():
    """A byte-level BPE trained on the rows: whole words where the character-level teacher has single characters."""
    return trained_byte_bpe("\n".join(PROMPTS + RESPONSES) * 3, vocab_size=300)


def raw_rows(n=16):
    return Dataset.from_dict({"prompt": (PROMPTS * 4)[:n], "response": (RESPONSES * 4)[:n]})


def cross_dataset(student_tok, teacher_tok, n=16):
    cfg = DataConfig(path="x.json", task="instruction")
    return with_sample_ids(tokenize_aligned(raw_rows(n), student_tok, teacher_tok, cfg))


def models(student_tok, teacher_tok):
    teacher = tiny_llama(len(teacher_tok), layers=3, hidden=48, seed=1)
    student = tiny_llama(len(student_tok), seed=2)
    return teacher, student


def cross_trainer(tmp_path, student_tok, teacher_tok, ds, teacher=None, student=None, **kw):
    if teacher is None:
        teacher, student = models(student_tok, teacher_tok)
    args = make_args(tmp_path, **{**CROSS, **kw})
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        processing_class=student_tok,
        teacher_processing_class=teacher_tok,
    )


def test_aligned_rows_keep_the_students_own_tokenization():
    student_tok, teacher_tok = student_tokenizer(), make_char_tokenizer()
    cfg = DataConfig(path="x.json", task="instruction")
    plain = tokenize_instruction(raw_rows(8), student_tok, cfg)
    aligned = tokenize_aligned(raw_rows(8), student_tok, teacher_tok, cfg)
    assert aligned["input_ids"] == plain["input_ids"] and aligned["labels"] == plain["labels"]
    for row in aligned:
        # The teacher reads its own (character-level) ids; each pair predicts the token after the same text.
        assert row["teacher_input_ids"] != row["input_ids"]
        assert len(row["align_student"]) == len(row["align_teacher"]) > 0
        assert all(row["labels"][i + 1] != -100 for i in row["align_student"])
        assert max(row["align_teacher"]) == len(row["teacher_input_ids"]) - 1  # trimmed to what pairs read


@pytest.mark.parametrize("loss", ["uld", "exact", "hybrid"])
def test_the_kd_term_equals_the_loss_computed_from_the_raw_text(tmp_path, loss):
    """The trainer's KD value against an independent path: align_batch on the raw text, both forwards, the loss."""
    student_tok, teacher_tok = student_tokenizer(), make_char_tokenizer()
    ds = cross_dataset(student_tok, teacher_tok, n=6)
    trainer = cross_trainer(tmp_path, student_tok, teacher_tok, ds, cross_tokenizer_loss=loss, temperature=2.0)
    batch = DistillationCollator(student_tok)([ds[i] for i in range(6)])
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, dict(batch))

    examples = [prompt_example(p, r) for p, r in zip(PROMPTS[:6], RESPONSES[:6])]
    ref = align_batch(examples, student_tok, teacher_tok)
    with torch.no_grad():
        z_s = trainer.student(**ref.student_inputs()).logits
        z_t = trainer.teacher.model(**ref.teacher_inputs()).logits
    z_s, z_t = gather_positions(z_s, ref.student_positions), gather_positions(z_t, ref.teacher_positions)
    vocab_map = build_exact_map(student_tok, teacher_tok)
    common = {"temperature": 2.0, "mask": ref.pair_mask}
    if loss == "uld":
        want = uld_loss(z_s, z_t, **common)
    elif loss == "exact":
        want = exact_map_divergence(z_s, z_t, vocab_map.student_ids, vocab_map.teacher_ids, **common)
    else:
        want = hybrid_loss(z_s, z_t, vocab_map.student_ids, vocab_map.teacher_ids, **common)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_kd_counts_aligned_positions_and_ce_counts_tokens_across_accumulation(tmp_path):
    """Batch 8 x 1 and batch 4 x 2 give the same update: KD over the window's aligned positions, CE over its
    counted tokens (two different counts: a character-level student against a teacher with whole words)."""
    student_tok, teacher_tok = make_char_tokenizer(), student_tokenizer()
    ds = cross_dataset(student_tok, teacher_tok, n=8)
    assert sum(len(r) for r in ds["align_student"]) < sum(sum(x != -100 for x in r[1:]) for r in ds["labels"])
    params = []
    for name, batch, accumulation in (("one", 8, 1), ("two", 4, 2)):
        trainer = cross_trainer(
            tmp_path / name, student_tok, teacher_tok, ds, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=0.5,
            max_grad_norm=0.0, ce_weight=0.5,
        )  # fmt: skip
        teacher_before = flat_params(trainer.teacher.model).clone()
        trainer.train()
        assert torch.equal(flat_params(trainer.teacher.model), teacher_before)  # the teacher never learns
        assert all(p.grad is None for p in trainer.teacher.model.parameters())
        params.append(flat_params(trainer.student))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=1e-5)
    log = trainer.state.log_history[0]
    assert {"kd_loss", "ce_loss", "agreement"} <= log.keys() and 0.0 <= log["agreement"] <= 1.0


def test_identical_tokenizers_run_the_ordinary_loss(tmp_path):
    tok = make_char_tokenizer()
    cfg = DataConfig(path="x.json", task="instruction")
    ds = with_sample_ids(tokenize_instruction(raw_rows(8), tok, cfg))
    results = []
    for name, extra in (("plain", {}), ("cross", CROSS)):
        teacher, student = models(tok, tok)
        args = make_args(tmp_path / name, max_steps=2, per_device_train_batch_size=4, ce_weight=0.5, **extra)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tok,
            teacher_processing_class=tok,
        )  # fmt: skip
        assert trainer.vocab_map is None and trainer.fused  # the ordinary path, fused loss included
        trainer.train()
        results.append(flat_params(trainer.student))
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_a_tokenizer_mismatch_without_the_setting_is_still_refused(tmp_path):
    student_tok, teacher_tok = student_tokenizer(), make_char_tokenizer()
    teacher, student = models(student_tok, teacher_tok)
    with pytest.raises(ValueError, match="cross_tokenizer_loss"):
        DistillationTrainer(
            model=student, teacher_model=teacher, args=make_args(tmp_path), train_dataset=cross_dataset(
                student_tok, teacher_tok, 4), processing_class=student_tok, teacher_processing_class=teacher_tok,
        )  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"cross_tokenizer_loss": "wasserstein"}, "cross_tokenizer_loss='wasserstein'"),
        ({"cross_tokenizer_loss": None, "teacher_tokenizer": "gpt2"}, "teacher_tokenizer='gpt2' is set without"),
        ({"teacher_logits_path": "store"}, "needs a live teacher"),
        ({"hidden_weight": 1.0}, "hidden/attention/relation/RKD"),
        ({"lmbda": 0.5}, "lmbda/seq_kd"),
        ({"data_selection": {"score": "teacher_nll", "level": "token"}}, "data_selection"),
        ({"loss_chunk_size": 64}, "fused loss is not available"),
        ({"cross_tokenizer_loss": "hybrid", "cross_tokenizer_exact_weight": 0.0, "cross_tokenizer_uld_weight": 0.0},
         "distils nothing"),
        ({"task": "sequence_classification"}, "needs task=causal_lm"),
    ],
)  # fmt: skip
def test_cross_tokenizer_settings_are_refused_with_the_field_named(tmp_path, extra, match):
    kw = {"output_dir": str(tmp_path), "use_cpu": True, "teacher_model_name_or_path": "t", **CROSS, **extra}
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        DistillationConfig(**kw)


# ---------------------------------------------------------------- a recipe with a transplanted student


def write_teacher(path):
    tok = make_char_tokenizer()
    teacher = tiny_llama(len(tok), layers=4, hidden=48, seed=1, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    teacher.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_recipe(tmp_path, **overrides):
    student_dir = tmp_path / "student_tok"
    student_tokenizer().save_pretrained(student_dir)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
    recipe = {
        "teacher_model_name_or_path": write_teacher(tmp_path / "teacher"),
        "student": {"from_teacher": {"num_layers": 2, "tokenizer": str(student_dir)}},
        "dataset": {"path": str(data), "task": "instruction", "max_length": 64, "eval_size": 2},
        "output_dir": str(tmp_path / "run"),
        "cross_tokenizer_loss": "hybrid",
        "ce_weight": 0.5,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_a_recipe_trains_a_transplanted_student_against_the_teacher_and_exports_it(tmp_path):
    from llm_distill.cli import main

    assert main(["train", write_recipe(tmp_path)]) == 0
    out = tmp_path / "run"
    student = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == student_tokenizer().get_vocab()
    assert student.get_input_embeddings().weight.shape[0] == len(tokenizer)
    meta = json.load(open(out / "distillation.json"))
    assert meta["cross_tokenizer_loss"] == "hybrid" and meta["teacher_tokenizer"]
    logs = json.load(open(out / "trainer_state.json"))["log_history"]
    assert all(torch.isfinite(torch.tensor(e["kd_loss"])) for e in logs if "kd_loss" in e)
    evaluation = json.load(open(out / "eval_results.json"))  # the held-out rows are aligned and scored too
    assert evaluation["eval_kd_loss"] > 0 and 0 <= evaluation["eval_agreement"] <= 1 and evaluation["eval_ce_loss"] > 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"cross_tokenizer_loss": None}, "the teacher's tokenizer .* differ"),
        ({"dataset": {"path": "rows.jsonl", "task": "text", "packing": True}}, "dataset.packing=true"),
        ({"teacher_tokenizer": GPT2_DIR}, "has 50257 tokens but the teacher's output"),
    ],
)
def test_a_recipe_is_refused_before_weights_are_read(tmp_path, overrides, match):
    from llm_distill.recipes.preflight import preflight
    from llm_distill.recipes.schema import load_recipe

    recipe = load_recipe(write_recipe(tmp_path, **overrides))
    if "dataset" in overrides:
        recipe.dataset["path"] = str(tmp_path / "rows.jsonl")
    os.remove(tmp_path / "teacher" / "model.safetensors")  # no weight is read before these refusals
    with pytest.raises(ValueError, match=match):
        preflight(recipe, "train")
