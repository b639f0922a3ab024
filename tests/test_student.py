import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
)

from llm_distill.student import apply_lora, select_teacher_layers, shrink_config, student_from_teacher


def bert_config(**kw):
    base = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return BertConfig(**{**base, **kw})


def llama_config(**kw):
    base = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**{**base, **kw})


def test_tinybert4_config_from_bert_base():
    teacher = BertConfig()  # bert-base sizes: 12 layers, 768 hidden, 12 heads, 3072 FFN
    cfg = shrink_config(teacher, num_layers=4, hidden_size=312, intermediate_size=1200)
    assert type(cfg) is BertConfig
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        4,
        312,
        12,
        1200,
    )
    assert cfg.vocab_size == teacher.vocab_size and teacher.num_hidden_layers == 12  # teacher untouched


def test_shrink_llama_family():
    cfg = shrink_config(llama_config(), num_layers=2, hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 16, 2, 1)
    assert cfg.head_dim == 8  # derived head_dim follows the new width
    kept = shrink_config(llama_config(), num_layers=2)
    assert (kept.head_dim, kept.num_key_value_heads, kept.intermediate_size) == (8, 2, 64)
    explicit = shrink_config(llama_config(head_dim=16), num_layers=2, hidden_size=24, num_attention_heads=4)
    assert explicit.head_dim == 16  # set independently in the teacher (Qwen3-style): kept, no divisibility needed
    mha = shrink_config(llama_config(num_key_value_heads=4), num_layers=2, num_attention_heads=2, hidden_size=16)
    assert mha.num_key_value_heads == 2


def test_shrink_keeps_per_layer_types_of_the_chosen_layers():
    teacher = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        max_window_layers=3,
    )
    assert teacher.layer_types[-1] == "sliding_attention"
    cfg = shrink_config(teacher, num_layers=2)  # uniform: teacher layers 2 and 4
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    assert shrink_config(teacher, num_layers=2, teacher_layers=[1, 2]).layer_types == ["full_attention"] * 2


@pytest.mark.parametrize(
    ("config", "kwargs", "match"),
    [
        (bert_config(), {"num_layers": 0}, "num_layers=0 must be a positive int"),
        (
            bert_config(),
            {"num_layers": 2, "hidden_size": 30},
            "hidden_size=30 is not divisible by num_attention_heads=4",
        ),
        (bert_config(), {"num_layers": 2, "num_key_value_heads": 2}, "BertConfig has no num_key_value_heads"),
        (bert_config(), {"num_layers": 2, "intermediate_size": -5}, "intermediate_size=-5 must be a positive int"),
        (
            llama_config(),
            {"num_layers": 2, "num_attention_heads": 3, "hidden_size": 24},
            "not a multiple of num_key_v",
        ),
        (llama_config(), {"num_layers": 2, "num_key_value_heads": 8}, "num_attention_heads=4 is not a multiple"),
    ],
)
def test_shrink_errors(config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shrink_config(config, **kwargs)


def test_layer_selection():
    assert select_teacher_layers("uniform", 3, 6) == [2, 4, 6]
    assert select_teacher_layers("uniform", 4, 6) == [1, 3, 4, 6]
    assert select_teacher_layers("first", 3, 6) == [1, 2, 3]
    assert select_teacher_layers([6, 6], 2, 6) == [6, 6]
    with pytest.raises(ValueError, match=r"must list 2 teacher layers .* in 1\.\.6"):
        select_teacher_layers([0, 6], 2, 6)
    with pytest.raises(ValueError, match="more layers"):
        select_teacher_layers("uniform", 8, 6)
    with pytest.raises(ValueError, match="layer_init='every_k' is not known"):
        select_teacher_layers("every_k", 2, 6)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bert_student_copies_chosen_layers_and_heads(tmp_path, caplog):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(bert_config(num_labels=3)).eval()
    with caplog.at_level(logging.INFO, logger="llm_distill.student"):
        student = student_from_teacher(teacher, num_layers=3).eval()
    assert "initialised from teacher layers [2, 4, 6]" in caplog.text
    assert student.copied_teacher_layers == [2, 4, 6]
    assert type(student) is BertForSequenceClassification and student.config.num_hidden_layers == 3
    for i, t in enumerate([2, 4, 6]):
        assert _same(student.bert.encoder.layer[i], teacher.bert.encoder.layer[t - 1])
    for name in ("embeddings",):
        assert _same(getattr(student.bert, name), getattr(teacher.bert, name))
    assert _same(student.bert.pooler, teacher.bert.pooler) and _same(student.classifier, teacher.classifier)

    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_bert_mlm_student_keeps_tied_decoder_and_base_teacher_works():
    torch.manual_seed(0)
    teacher = BertForMaskedLM(bert_config())
    student = student_from_teacher(teacher, num_layers=2, layer_init="first")
    emb, dec = student.get_input_embeddings().weight, student.get_output_embeddings().weight
    assert emb.data_ptr() == dec.data_ptr() and torch.equal(emb, teacher.get_input_embeddings().weight)
    # A head-less teacher into a classifier student: the encoder is copied across the base-model prefix.
    base = BertModel(bert_config())
    cls = student_from_teacher(base, num_layers=2, model_class=BertForSequenceClassification)
    assert _same(cls.bert.encoder.layer[1], base.encoder.layer[5])


def test_llama_student_copies_and_reloads_with_tied_embeddings(tmp_path):
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(llama_config()).eval()
    student = student_from_teacher(teacher, num_layers=2, layer_init=[1, 6]).eval()
    assert _same(student.model.layers[0], teacher.model.layers[0]) and _same(
        student.model.layers[1], teacher.model.layers[5]
    )
    assert _same(student.model.norm, teacher.model.norm)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)

    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_untied_llama_copies_lm_head():
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(llama_config(tie_word_embeddings=False))
    student = student_from_teacher(teacher, num_layers=3)
    assert student.lm_head.weight.data_ptr() != student.model.embed_tokens.weight.data_ptr()
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_narrow_student_is_random_and_says_so(tmp_path, caplog):
    torch.manual_seed(0)
    teacher = BertForMaskedLM(bert_config())
    with caplog.at_level(logging.INFO, logger="llm_distill.student"):
        student = student_from_teacher(
            teacher, num_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32
        )
    assert "hidden_size 16 vs 32" in caplog.text and student.copied_teacher_layers == []
    assert student.get_input_embeddings().weight.shape == (64, 16)
    assert student.get_input_embeddings().weight.data_ptr() == student.get_output_embeddings().weight.data_ptr()
    student.save_pretrained(tmp_path)
    assert AutoModelForMaskedLM.from_pretrained(tmp_path).config.hidden_size == 16


def test_apply_lora_trains_only_adapters_and_starts_equal():
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config()).eval()
    ids = torch.randint(0, 64, (1, 6))
    before = model(input_ids=ids).logits
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 6 * 2 * 2  # 6 layers x (q, v) x (A, B)
    torch.testing.assert_close(peft_model(input_ids=ids).logits, before)  # B starts at zero

    cls = apply_lora(BertForSequenceClassification(bert_config(num_labels=2)), r=2, alpha=4, dropout=0.1)
    names = [n for n, p in cls.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in names) and any("lora_A" in n for n in names)
    with pytest.raises(ValueError, match="LoRA r=0 must be >= 1"):
        apply_lora(model, r=0)


def test_from_teacher_init_from_takes_the_layers_from_another_checkpoint(tmp_path):
    """A no-teacher baseline must be able to start from the pretrained model rather than the fine-tuned teacher."""
    from conftest import tiny_bert_classifier

    from llm_distill.recipes.run import build_student

    teacher = tiny_bert_classifier(layers=4, seed=1)
    pretrained = tiny_bert_classifier(layers=4, seed=2)
    pretrained.save_pretrained(tmp_path / "pretrained")
    shape = {"num_layers": 2, "layer_init": [2, 4], "init_from": str(tmp_path / "pretrained")}
    recipe = SimpleNamespace(student={"from_teacher": shape, "num_labels": 2})
    args = SimpleNamespace(attention_weight=0.0)

    def block(model, i):
        return model.bert.encoder.layer[i].output.dense.weight

    for given_teacher in (teacher, None):  # the teacher is not needed to shape the student then
        student = build_student(recipe, args, "sequence_classification", given_teacher)
        assert torch.equal(block(student, 0), block(pretrained, 1))
        assert torch.equal(block(student, 1), block(pretrained, 3))
        assert not torch.equal(block(student, 1), block(teacher, 3))
    without = SimpleNamespace(student={"from_teacher": {"num_layers": 2}})
    with pytest.raises(ValueError, match="init_from"):
        build_student(without, args, "sequence_classification", None)


def test_init_from_with_another_tokenizer_is_refused_before_training(tmp_path, capsys):
    """Embeddings copied from a checkpoint with other token ids would be silently wrong for the teacher's ids."""
    import yaml
    from conftest import make_char_tokenizer, make_swapped_char_tokenizer, tiny_llama

    from llm_distill.cli import main

    tokenizer = make_char_tokenizer()
    for name, tok, seed in (("teacher", tokenizer, 1), ("pretrained", make_swapped_char_tokenizer(), 2)):
        tiny_llama(len(tokenizer), layers=3, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    text = tmp_path / "train.txt"
    text.write_text("\n".join(f"a line about b number {i}" for i in range(16)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "run"),
                "teacher_model_name_or_path": str(tmp_path / "teacher"),
                "student": {"from_teacher": {"num_layers": 2, "init_from": str(tmp_path / "pretrained")}},
                "dataset": {"path": str(text), "max_length": 16, "packing": False, "eval_size": 0},
                "max_steps": 1,
                "use_cpu": True,
                "save_strategy": "no",
                "report_to": "none",
                "cache": {"output_dir": str(tmp_path / "store"), "k": 4},
            }
        )
    )
    for verb in ("train", "cache-logits"):
        assert main([verb, str(recipe)]) == 2
        assert "'a': teacher id" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()
