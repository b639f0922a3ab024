"""Logit store: round trip, lookup by sample id, fingerprint refusal, crash-safe resume, corruption, and the
sparse loss read from the store against the dense loss of the live teacher."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _store_helpers import VOCAB, Counting, CrashAfter, collate, left_collate, make_rows, tiny_llama, tiny_tokenizer

from llm_distill.losses import divergence, sparse_divergence
from llm_distill.losses.divergences import LOG_FLOOR  # noqa: E402
from llm_distill.teacher import CachedTeacher, LiveTeacher
from llm_distill.teacher.store import CorruptShardError, LogitStore, LogitStoreError, cache_logits, counted_mask
from llm_distill.teacher.store.fingerprint import (
    FINGERPRINT_FIELDS,
    FingerprintMismatchError,
    compare_fingerprints,
    hash_state_dict,
    hash_tokenizer,
    make_fingerprint,
)


@pytest.fixture(scope="module")
def teacher():
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def rows():
    return make_rows(12)


def write(tmp: Path, teacher, tokenizer, rows, collator=collate, **kw) -> Path:
    args = dict(
        k=8,
        temperature=2.0,
        batch_size=3,
        shard_size=4,
        dtype="float16",
        teacher_id="tiny-llama",
        tokenizer=tokenizer,
        dataset_fingerprint="rows-v1",
        max_length=16,
    )
    args.update(kw)
    return cache_logits(teacher, rows, collator, output_dir=tmp, **args)


def live_logprobs(teacher, batch, temperature):
    return F.log_softmax(LiveTeacher(teacher)(batch).logits.float() / temperature, dim=-1)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, teacher, tokenizer, rows):
    return write(tmp_path_factory.mktemp("store"), teacher, tokenizer, rows)


def test_round_trip_topk(store_dir, teacher, rows):
    batch = collate(rows[:5])
    out = CachedTeacher(store_dir)(batch).sparse
    mask = counted_mask(batch, "causal_lm")
    assert out.ids.shape == (*batch["input_ids"].shape, 8) and out.tail_logprobs.shape == batch["input_ids"].shape
    lp = live_logprobs(teacher, batch, 2.0)
    top_lp, top_id = lp.topk(8, dim=-1)
    assert torch.equal(out.ids[mask], top_id[mask])
    torch.testing.assert_close(out.logprobs[mask], top_lp[mask], atol=2e-2, rtol=2e-3)  # fp16 storage
    tail = torch.log1p(-top_lp.exp().sum(-1).clamp(max=1 - 1e-7))
    torch.testing.assert_close(out.tail_logprobs[mask], tail[mask], atol=2e-2, rtol=2e-3)
    # Uncounted positions are padding: ids 0, floors, and at least the masked prompt/padding exists here.
    assert (~mask).any()
    assert (out.ids[~mask] == 0).all() and (out.logprobs[~mask] == LOG_FLOOR).all()
    assert (out.tail_logprobs[~mask] == LOG_FLOOR).all()


def test_lookup_by_sample_id_survives_shuffling_subsets_and_padding_side(store_dir, rows):
    cached = CachedTeacher(store_dir)
    reference = {}
    for i in range(0, len(rows), 4):
        batch = collate(rows[i : i + 4])
        out = cached(batch).sparse
        m = counted_mask(batch, "causal_lm")
        for b, sid in enumerate(batch["sample_id"].tolist()):
            reference[sid] = (out.ids[b][m[b]], out.logprobs[b][m[b]])
    subset = random.Random(0).sample(rows, 5)  # shuffled, crosses shards
    batch = left_collate(subset)
    out = cached(batch).sparse
    m = counted_mask(batch, "causal_lm")
    for b, sid in enumerate(batch["sample_id"].tolist()):
        assert torch.equal(out.ids[b][m[b]], reference[sid][0])
        assert torch.equal(out.logprobs[b][m[b]], reference[sid][1])


def test_missing_sample_and_changed_labels_are_refused(store_dir, rows):
    cached = CachedTeacher(store_dir)
    foreign = dict(rows[0], sample_id=5)
    with pytest.raises(LogitStoreError, match=r"sample_id\(s\) \[5\]"):
        cached(collate([rows[1], foreign]))
    changed = dict(rows[2], labels=[-100] * 4 + rows[2]["labels"][4:])
    with pytest.raises(ValueError, match=f"sample_id {rows[2]['sample_id']}.*changed"):
        cached(collate([changed]))
    with pytest.raises(ValueError, match="hidden_layers=\\[2\\]"):
        cached(collate(rows[:1]), hidden_layers=(2,))


@pytest.mark.parametrize("field", FINGERPRINT_FIELDS)
def test_every_fingerprint_field_mismatch_is_refused(store_dir, field):
    stored = LogitStore(store_dir).fingerprint
    changed = {"temperature": 1.0, "k": 16, "max_length": 32, "num_examples": 3, "num_draws": 64}
    run_value = changed.get(field, f"other-{field}")
    expected = dict(stored, **{field: run_value})
    if field == "teacher_files_hash":
        # The teacher's weight files identify it when both sides know them; this store's teacher had no folder.
        assert stored[field] is None
        compare_fingerprints(stored, expected)  # one side cannot tell: the teacher id decides (and matches)
        stored = dict(stored, teacher_files_hash="a" * 64)
        with pytest.raises(FingerprintMismatchError) as err:
            compare_fingerprints(stored, dict(expected, teacher_id="renamed"))  # the path no longer matters
    else:
        with pytest.raises(FingerprintMismatchError) as err:
            CachedTeacher(store_dir, expected=expected)
    msg = str(err.value)
    assert f"{field}={stored[field]!r}" in msg and f"{field}={run_value!r}" in msg, msg
    assert err.value.field == field


def test_temperature_message_and_matching_fingerprint_accepted(store_dir, teacher, tokenizer, rows):
    run = make_fingerprint(
        teacher_id="tiny-llama",
        teacher=teacher,
        tokenizer=tokenizer,
        dataset_fingerprint="rows-v1",
        sample_ids=[r["sample_id"] for r in rows],
        max_length=16,
        temperature=2.0,
        task="causal_lm",
    )
    CachedTeacher(store_dir, expected=run)  # the same run: accepted
    with pytest.raises(
        FingerprintMismatchError,
        match=r"temperature=2\.0 but this run uses temperature=1\.0.*"
        r"re-run cache-logits at temperature=1\.0",
    ):
        LogitStore(store_dir, expected=dict(run, temperature=1.0))


def test_hashes_see_weights_and_tokenizer_changes(teacher, tokenizer):
    other = tiny_llama(seed=0)
    assert hash_state_dict(other) == hash_state_dict(teacher)
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.add_(1e-3)
    assert hash_state_dict(other) != hash_state_dict(teacher)
    assert hash_state_dict(other, full=True) != hash_state_dict(teacher, full=True)
    assert hash_tokenizer(tiny_tokenizer()) == hash_tokenizer(tokenizer)
    assert hash_tokenizer(tiny_tokenizer(extra_special="<extra>")) != hash_tokenizer(tokenizer)


def test_writer_refuses_other_fingerprint_in_output_dir(tmp_path, teacher, tokenizer, rows):
    write(tmp_path, teacher, tokenizer, rows)
    with pytest.raises(FingerprintMismatchError, match="temperature=2.0 but this run uses temperature=1.0"):
        write(tmp_path, teacher, tokenizer, rows, temperature=1.0)
    write(tmp_path, teacher, tokenizer, rows, temperature=1.0, overwrite=True)
    assert LogitStore(tmp_path).temperature == 1.0


@pytest.mark.parametrize("mode", ["topk", "sampled"])
def test_interrupted_run_resumes_to_byte_identical_store(tmp_path, teacher, tokenizer, rows, mode):
    kw = dict(mode=mode, num_samples=16)
    full = write(tmp_path / "full", teacher, tokenizer, rows, **kw)
    # 12 rows, shard_size 4, batch 3: 2 batches per shard; crash in the 2nd batch of shard 2 (calls 1-4 done).
    with pytest.raises(RuntimeError, match="simulated crash"):
        write(tmp_path / "resumed", teacher, tokenizer, rows, collator=CrashAfter(4), **kw)
    partial = json.loads((tmp_path / "resumed" / "manifest.rank0.json").read_text())
    assert [s["index"] for s in partial["shards"]] == [0, 1] and not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(LogitStoreError, match="did not finish"):
        LogitStore(tmp_path / "resumed")
    counter = Counting()
    write(tmp_path / "resumed", teacher, tokenizer, rows, collator=counter, **kw)
    assert counter.calls == 2  # only the last shard was computed again
    resumed = tmp_path / "resumed"
    assert (full / "manifest.json").read_bytes() == (resumed / "manifest.json").read_bytes()
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    for name in names:
        assert (full / name).read_bytes() == (resumed / name).read_bytes(), name


def test_truncated_or_corrupted_shard_is_named(tmp_path, teacher, tokenizer, rows):
    path = write(tmp_path, teacher, tokenizer, rows)
    shard = path / LogitStore(path).shards[1]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    # Found when the store is opened, before any row is read (not at the training step that first needs it).
    with pytest.raises(CorruptShardError, match=f"{shard}.*truncated.*re-run `llm-distill cache-logits`"):
        CachedTeacher(path)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(CorruptShardError, match=f"{shard}.*checksum"):
        CachedTeacher(path)
    with pytest.raises(CorruptShardError, match=str(shard)):
        LogitStore(path, verify="none").verify()
    CachedTeacher(path, verify="none")(collate(rows[:2]))  # an explicit opt-out still serves the intact shards


def test_sparse_tends_to_dense_and_equals_it_at_full_vocab(tmp_path, teacher, tokenizer, rows):
    student = tiny_llama(seed=1)
    batch = collate(rows[:6])
    mask = counted_mask(batch, "causal_lm")
    s_logits = student(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits.detach()
    t_logits = LiveTeacher(teacher)(batch).logits
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        dense = divergence(s_logits, t_logits, kind=kind, temperature=2.0, mask=mask, reduction="sum")
        errors = []
        for k in (4, 16, 64, VOCAB):
            store = write(tmp_path / f"k{k}", teacher, tokenizer, rows, k=k, dtype="float32", overwrite=True)
            targets = CachedTeacher(store)(batch).sparse
            sparse = sparse_divergence(s_logits, targets, kind=kind, temperature=2.0, mask=mask, reduction="sum")
            errors.append(abs(float(sparse - dense)) / float(dense))
        assert errors[-1] < 1e-5, (kind, errors)
        assert errors[0] > errors[1] > errors[2] > errors[3], (kind, errors)


def test_store_loss_and_gradient_equal_live_teacher_at_k_equal_v(tmp_path, teacher, tokenizer, rows):
    store = write(tmp_path, teacher, tokenizer, rows, k=VOCAB, dtype="float32", temperature=1.5)
    student = tiny_llama(seed=2)
    batch = collate(random.Random(1).sample(rows, 6))
    mask = counted_mask(batch, "causal_lm")
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    a, b = s_logits.clone().requires_grad_(), s_logits.clone().requires_grad_()
    live = divergence(a, LiveTeacher(teacher)(batch).logits, temperature=1.5, mask=mask, reduction="sum")
    cached = sparse_divergence(b, CachedTeacher(store)(batch).sparse, temperature=1.5, mask=mask, reduction="sum")
    live.backward()
    cached.backward()
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_sampled_store_weights_and_unbiased_kl(tmp_path, teacher, tokenizer, rows):
    store = write(tmp_path, teacher, tokenizer, rows, mode="sampled", num_samples=2000, dtype="float32")
    batch = collate(rows[:4])
    mask = counted_mask(batch, "causal_lm")
    out = CachedTeacher(store)(batch).sparse
    assert out.is_sampled
    torch.testing.assert_close(out.weights[mask].sum(-1), torch.ones(int(mask.sum())))
    lp = live_logprobs(teacher, batch, 2.0)
    used = out.weights > 0
    torch.testing.assert_close(out.logprobs[used], lp.gather(-1, out.ids)[used], atol=1e-5, rtol=1e-5)
    ids = out.ids[mask]
    w = out.weights[mask]
    for row_ids, row_w in zip(ids, w):
        real = row_ids[row_w > 0]
        assert real.unique().numel() == real.numel()  # unique ids
    s_logits = tiny_llama(seed=3)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    dense = divergence(s_logits.detach(), LiveTeacher(teacher)(batch).logits, temperature=2.0, mask=mask)
    est = sparse_divergence(s_logits.detach(), out, temperature=2.0, mask=mask)
    assert abs(float(est - dense)) / float(dense) < 0.05


def test_sequence_classification_store(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=3,
        pad_token_id=1,
    )
    model = LlamaForSequenceClassification(cfg).eval()
    rows = [dict(r, labels=[0]) for r in make_rows(6)]

    def clf_collate(batch_rows):
        batch = collate([dict(r, labels=r["input_ids"]) for r in batch_rows])
        batch["labels"] = torch.tensor([r["labels"][0] for r in batch_rows])
        return batch

    store = write(tmp_path, model, tokenizer, rows, collator=clf_collate, k=3, task="sequence_classification")
    batch = clf_collate(rows[2:5])
    out = CachedTeacher(store)(batch).sparse
    assert out.ids.shape == (3, 3) and out.tail_logprobs.shape == (3,)
    lp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / 2.0, -1)
    torch.testing.assert_close(out.logprobs, lp.gather(-1, out.ids).detach(), atol=2e-3, rtol=2e-3)
    assert (out.tail_logprobs == LOG_FLOOR).all()  # k = num_labels: nothing left over


def test_dataset_content_hash_and_large_tensor_hash():
    from datasets import Dataset

    from llm_distill.teacher.store.fingerprint import hash_dataset

    rows = make_rows(20)
    assert hash_dataset(rows) == hash_dataset(Dataset.from_list(rows))  # arrow path == row path
    edited = make_rows(20)
    edited[7]["labels"][-1] = -100
    assert hash_dataset(edited) != hash_dataset(rows)
    # More elements than a float32 index can address exactly: sampled positions must stay in range.
    big = {"w": torch.arange(2**24 + 5, dtype=torch.int32)}
    assert hash_state_dict(big).startswith("sampled")


def test_masked_lm_counts_labelled_positions_only(tmp_path, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
    )
    model = BertForMaskedLM(cfg).eval()
    rows = make_rows(6)
    for r in rows:  # MLM labels: only every third token is a prediction target
        r["labels"] = [t if i % 3 == 0 else -100 for i, t in enumerate(r["input_ids"])]
    store = write(tmp_path, model, tokenizer, rows, task="masked_lm", k=5)
    assert LogitStore(store).manifest["num_rows"] == sum(len(r["input_ids"][::3]) for r in rows)
    batch = collate(rows[:3])
    out = CachedTeacher(store)(batch).sparse
    mask = batch["labels"] != -100
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / 2, -1)
    top_lp, top_id = lp.topk(5, dim=-1)
    assert torch.equal(out.ids[mask], top_id[mask]) and (out.ids[~mask] == 0).all()
    torch.testing.assert_close(out.logprobs[mask], top_lp[mask], atol=2e-2, rtol=2e-3)
