"""`llm-distill plan`: each memory item against its closed form or a real run, the verdict, and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import make_char_tokenizer, tiny_bert_classifier, tiny_llama

from llm_distill.cli import main
from llm_distill.losses import SparseTargets, fused_distillation_loss
from llm_distill.plan import get_device, make_plan, render, run_spec
from llm_distill.plan.activations import student_activations
from llm_distill.plan.devices import parse_memory
from llm_distill.plan.memory import Footprints, memory_plan
from llm_distill.plan.spec import StoreSpec
from llm_distill.plan.strategies import student_state, teacher_bytes
from llm_distill.plan.trace import LiveBytes, SavedBytes
from llm_distill.plan.vocab import fused_loss_peak, naive_loss_peak
from llm_distill.recipes import load_recipe

H100 = get_device("h100-80gb")


def write_teacher(path, model) -> str:
    model.save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("llama"), tiny_llama(vocab_size=101, layers=4, hidden=64, heads=4))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("\n".join("the quick brown fox jumps over the lazy dog " * (1 + i % 3) for i in range(40)))
    return str(path)


def recipe(tmp_path, teacher: str, data: str, **overrides):
    raw = {
        "output_dir": str(tmp_path / "out"),
        "teacher_model_name_or_path": teacher,
        "student": {"from_teacher": {"num_layers": 2}},
        "dataset": {"path": data, "task": "text", "max_length": 32, "packing": True},
        "per_device_train_batch_size": 4,
        "max_steps": 10,
        "use_cpu": True,
        "report_to": "none",
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def spec_of(path, *args):
    return run_spec(load_recipe(path, list(args)))


def item(plan_memory, name: str) -> dict:
    found = [i for i in plan_memory.items if i.name.startswith(name)]
    assert found, f"no item {name!r} in {[i.name for i in plan_memory.items]}"
    return found[0].bytes


def plan_memory(spec, strategy="single", devices=1, batch=None):
    batch = batch or spec.batch
    fp = Footprints(spec).at(batch)
    return memory_plan(spec, batch, fp, strategy=strategy, devices=devices, runtime=(0, ""))


# ---- closed forms ------------------------------------------------------------------------------------------


def test_weights_gradients_and_adam_state_are_parameter_counts_times_bytes(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, gradient_accumulation_steps=2))
    student = tiny_llama(vocab_size=101, layers=2, hidden=64, heads=4)
    params = sum(p.numel() for p in student.parameters())
    assert spec.student.params == params == spec.student.trainable
    mem = plan_memory(spec)
    assert item(mem, "student weights")["loss"] == params * 4
    assert item(mem, "optimizer state")["loss"] == params * 8  # AdamW: two fp32 moments
    # Accumulation keeps gradients alive in every moment; the teacher is a full fp32 replica.
    assert item(mem, "gradients") == {p: params * 4 for p in ("teacher fwd", "loss", "optimizer")}
    teacher_params = sum(p.numel() for p in tiny_llama(vocab_size=101, layers=4, hidden=64, heads=4).parameters())
    assert item(mem, "teacher weights")["loss"] == teacher_params * 4
    # Without accumulation gradients exist only from backward on (zero_grad frees them between steps).
    mem1 = plan_memory(spec_of(recipe(tmp_path, llama_teacher, text_file)))
    assert item(mem1, "gradients") == {"optimizer": params * 4}
    for phase in mem.phases:
        assert mem.total(phase) == sum(i.at(phase) for i in mem.items)
    assert mem.peak == max(mem.total(p) for p in mem.phases)


def test_strategies_shard_what_they_say(tmp_path, llama_teacher, text_file):
    p, block = 1_000_000, 100_000
    single = student_state(
        p, p, 0, block, torch.float32, mixed=False, optim="adamw_torch", strategy="single", devices=1
    )
    assert (single.weights, single.gradients, single.optimizer, single.buckets) == (4 * p, 4 * p, 8 * p, 0)
    ddp = student_state(p, p, 0, block, torch.float32, mixed=False, optim="adamw_torch", strategy="ddp", devices=4)
    assert ddp.buckets == 4 * p
    zero3 = student_state(p, p, 0, block, torch.float32, mixed=True, optim="adamw_torch", strategy="zero3", devices=4)
    # ZeRO paper: (2 + 2 + 12) bytes per parameter, all partitioned over N.
    assert zero3.weights + zero3.gradients + zero3.optimizer + zero3.master == 16 * p // 4
    assert teacher_bytes(p, block, 64, torch.bfloat16, "ddp", 8)[0] == 2 * p
    assert teacher_bytes(p, block, 64, torch.bfloat16, "fsdp2", 8)[:2] == (2 * p // 8, 2 * block)
    assert teacher_bytes(p, block, 64, torch.bfloat16, "zero3", 8)[:2] == (2 * p // 8, int(0.9 * 64 * 64) * 2)


def test_lora_trains_only_the_adapters(tmp_path, llama_teacher, text_file):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, student={"peft": lora}))
    # q_proj 64 -> 64 and v_proj 64 -> 32 (2 key/value heads of 16) in each of 2 layers: r x (in + out) each.
    adapters = 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert spec.student.adapter_params == adapters == spec.student.trainable
    mem = plan_memory(spec)
    assert item(mem, "LoRA adapters")["loss"] == adapters * 4
    assert item(mem, "optimizer state")["loss"] == adapters * 8


def test_fused_loss_peak_is_the_closed_form_and_what_the_real_loss_allocates(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, loss_chunk_size=16))
    rows, v, h, chunk = 4 * 31, 101, 64, 16
    t_h = 64
    blk = min((1 << 24) // v, chunk)
    # 2 fp32 (chunk, V) buffers + 1 scratch block (forward KL) + V x H and R x H gradients + compacted inputs.
    expected = 2 * chunk * v * 4 + blk * v * 4 + v * h * 4 + 2 * rows * h * 4 + rows * t_h * 4
    assert fused_loss_peak(spec, 4) == expected
    # The real loss on real tensors allocates no more than that (its hidden/teacher inputs are already compacted).
    hidden = torch.randn(rows, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    t_hidden, t_weight = torch.randn(rows, t_h), torch.randn(v, t_h)
    with LiveBytes() as live:
        kd, _ = fused_distillation_loss(hidden, weight, teacher_hidden=t_hidden, teacher_weight=t_weight,
                                        chunk_size=chunk)  # fmt: skip
        kd.backward()
    assert expected - rows * h * 4 - rows * t_h * 4 - 1024 <= live.peak <= expected


def test_store_targets_and_sparse_fused_buffers(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, loss_chunk_size=16))
    cached = replace(spec, live_teacher=False, teachers=[], store=StoreSpec("topk", 8, "test"))
    mem = plan_memory(cached)
    # (B, S, k) int64 ids + fp32 log-probs and one fp32 tail per token.
    assert item(mem, "top-k targets")["loss"] == 4 * 32 * (8 * 12 + 4)
    rows, v = 4 * 31, 101
    sparse = SparseTargets(
        torch.zeros(rows, 8, dtype=torch.long), torch.full((rows, 8), -3.0), torch.full((rows,), -2.0)
    )
    hidden, weight = torch.randn(rows, 64, requires_grad=True), torch.randn(v, 64, requires_grad=True)
    with LiveBytes() as live:
        kd, _ = fused_distillation_loss(hidden, weight, sparse_targets=sparse, chunk_size=16)
        kd.backward()
    planned = fused_loss_peak(cached, 4)
    assert live.peak <= planned <= live.peak + 2 * rows * (8 * 12 + 4) + rows * 64 * 4 + 1024


def test_fake_traces_equal_the_same_code_on_real_tensors(tmp_path, llama_teacher, text_file):
    """The plan measures on fake tensors; the same meter on real tensors must see the same bytes."""
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file))
    fake = naive_loss_peak(spec, 2)
    from llm_distill.losses.terms import dense_logit_terms

    hidden = torch.randn(2, 32, 64, requires_grad=True)
    weight = torch.randn(101, 64, requires_grad=True)
    teacher_logits = torch.randn(2, 32, 101)
    mask, labels = torch.ones(2, 32, dtype=torch.bool), torch.zeros(2, 32, dtype=torch.long)
    kd_args = dict(kind="forward_kl", temperature=1.0, beta=0.5, scale_by_t2=True)
    with LiveBytes() as live:
        logits = torch.nn.functional.linear(hidden, weight)
        kd, ce, _ = dense_logit_terms(
            logits, teacher_logits=teacher_logits, mask=mask, labels=labels, kd=kd_args, vocab_size=None, want_ce=False
        )
        del logits
        kd.backward()
    assert live.peak == fake
    # Saved activations of a real two-block student equal the fake trace's.
    act = student_activations(spec, 2)
    model = tiny_llama(vocab_size=101, layers=2, hidden=64, heads=4).train()
    with SavedBytes(model.parameters(), {f"block{i}": b for i, b in enumerate(model.model.layers)}) as saved:
        out = model(input_ids=torch.zeros(2, 32, dtype=torch.long), output_hidden_states=True,
                    logits_to_keep=torch.zeros(0, dtype=torch.long))  # fmt: skip
        saved.add_outputs([out.hidden_states[-1]])
    assert saved.by_label["block1"] == act.per_layer
    assert saved.total == act.rest + 2 * act.per_layer


def test_autocast_weight_copies_match_the_trace(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, bf16=True))
    act = student_activations(spec, 2)
    # The two-block trace saw every Linear weight of the two-block student cast to bf16 (lm_head included).
    assert act.traced_weight_copies == act.weight_copies == 2 * spec.student.linear_params


def test_checkpointing_keeps_one_input_per_block(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, activation_checkpointing=True))
    act = student_activations(spec, 4)
    assert act.layer_input == 4 * 32 * 64 * 4  # (B, S, H) fp32
    assert act.saved(True) == act.rest + 2 * act.layer_input + act.per_layer < act.saved(False)


def test_batch_line_is_exact_at_other_batch_sizes(tmp_path, llama_teacher, text_file):
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file))
    line = Footprints(spec).at(7)
    direct = Footprints(replace(spec, batch=7)).at(7)
    assert line.activations == direct.activations
    assert abs(line.loss - direct.loss) <= 64
    assert abs(line.teacher_forward - direct.teacher_forward) <= 64


def test_kv_cache_for_on_policy_steps(tmp_path, llama_teacher, text_file):
    from llm_distill.plan.spec import OnPolicy

    spec = replace(spec_of(recipe(tmp_path, llama_teacher, text_file)), onpolicy=OnPolicy(0.5, 16, False))
    mem = plan_memory(spec)
    # 2 (K, V) x 2 layers x 2 kv heads x 16 head dim x B 4 x (32 prompt + 16 new) x 4 B
    assert item(mem, "KV cache")["generation"] == 2 * 2 * 2 * 16 * 4 * (32 + 16) * 4
    assert "generation" in mem.phases


# ---- verdict, suggestions, CLI -----------------------------------------------------------------------------


def test_a_run_that_cannot_fit_says_so_and_gets_a_change_that_fits(tmp_path, llama_teacher, text_file):
    # Materialised logits (loss_chunk_size 0), so that the fused loss is among the changes suggested.
    spec = spec_of(recipe(tmp_path, llama_teacher, text_file, per_device_train_batch_size=64, loss_chunk_size=0))
    device = replace(H100, runtime=0)
    capacity = make_plan(spec, device, advise=False).memory.peak // 2
    plan = make_plan(spec, device, capacity=capacity)
    assert not plan.fits
    assert "DOES NOT FIT" in render(plan)
    assert 0 < plan.largest_batch < 64
    assert make_plan(replace(spec, batch=plan.largest_batch), device, capacity=capacity, advise=False).fits
    assert not make_plan(replace(spec, batch=plan.largest_batch + 1), device, capacity=capacity, advise=False).fits
    assert any(s.fits for s in plan.suggestions), [s.__dict__ for s in plan.suggestions]
    fused = [s for s in plan.suggestions if s.change.startswith("fused")]
    assert fused and fused[0].saves > 0


def test_plan_never_loads_weights(tmp_path, llama_teacher, text_file, monkeypatch):
    import safetensors
    import safetensors.torch
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the plan read weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "safe_open", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert os.path.exists(os.path.join(llama_teacher, "model.safetensors"))
    path = recipe(tmp_path, llama_teacher, text_file, student={"peft": {"r": 2}}, loss_chunk_size=8)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", path, "--device", "a100-80gb", "--devices", "2", "--strategy", "fsdp2"]) == 0
    assert "memory per device" in out.getvalue()
    assert "problem: loss_chunk_size=8 is refused under fsdp2" in out.getvalue()  # what train would refuse


def test_plan_and_train_dry_run_print_the_same_table(tmp_path, llama_teacher, text_file):
    path = recipe(tmp_path, llama_teacher, text_file)
    outputs = []
    for argv in (["plan", path, "--device", "l4"], ["train", path, "--dry-run", "--device", "l4"]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(argv) == 0
        outputs.append(buf.getvalue())
    assert outputs[0] == outputs[1]
    assert "FITS" in outputs[0] and "time per step" in outputs[0]
    assert not os.path.exists(tmp_path / "out"), "a dry run writes nothing"


def test_cpu_plan_is_calibrated_on_this_machine(tmp_path, llama_teacher, text_file):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", recipe(tmp_path, llama_teacher, text_file)]) == 0
    assert "measured on this CPU" in buf.getvalue()


def test_classification_with_features_plans(tmp_path, text_file):
    teacher = write_teacher(tmp_path / "bert", tiny_bert_classifier(vocab_size=101, layers=4, hidden=64, heads=4))
    data = tmp_path / "cls.jsonl"
    data.write_text("\n".join(json.dumps({"text": "a b c " * (i % 7 + 1), "label": i % 2}) for i in range(30)))
    path = recipe(
        tmp_path, teacher, str(data), dataset={"task": "classification", "max_length": 24, "packing": False},
        hidden_weight=1.0, attention_weight=1.0, layer_map=[[0, 0], [1, 2], [2, 4]],
    )  # fmt: skip
    spec = spec_of(path)
    assert spec.task == "sequence_classification" and spec.student_attn == "eager"
    assert spec.lengths.longest <= 24 and spec.lengths.rows == 30
    mem = plan_memory(spec)
    assert item(mem, "feature terms")["loss"] > 0
    # Mapped teacher hidden states (3 layers) and attention maps (2 layers) are held for the loss.
    seq = spec.seq
    held = 3 * 4 * seq * 64 * 4 + 2 * 4 * 4 * seq * seq * 4 + 4 * 2 * 4
    assert item(mem, "teacher outputs held")["loss"] == held


@pytest.mark.parametrize(("text", "value"), [("80GB", 80 << 30), ("24 GiB", 24 << 30), ("512MB", 512 << 20)])
def test_parse_memory(text, value):
    assert parse_memory(text) == value
    with pytest.raises(ValueError, match="--device-memory '80'"):
        parse_memory("80")
