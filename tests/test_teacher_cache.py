"""Teacher cache: round trip against the teacher's own float64 distribution, window alignment,
resume (skips finished parts, rewrites a lost one identically), refusals, k = vocab."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from vnmini.data.shards import ShardReader
from vnmini.errors import VnminiError
from vnmini.kernels import kd_loss, sparse_kd_loss
from vnmini.training.teacher_cache import PART, TeacherCache, load_teacher, write_teacher_cache

T = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, law_corpus):
    """Shards, their tokenizer and a random teacher checkpoint saved with it."""
    from vnmini.checkpoint import save_checkpoint
    from vnmini.models import LlamaForCausalLM, ModelConfig

    d = tmp_path_factory.mktemp("tc")
    tok = law_corpus(d)
    cfg = ModelConfig(vocab_size=tok.vocab_size + 3, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # padded vocab rows
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)  # peaked distributions, so k < V leaves a small, non-trivial rest
    save_checkpoint(model, d / "teacher", tokenizer=tok)
    return d, tok


def teacher_logprobs64(d, window: int) -> np.ndarray:
    """log-softmax (float64) of the teacher over the tokenizer's vocab for window ``window`` [T, V]."""
    t = load_teacher(d / "teacher", device="cpu")
    x = torch.from_numpy(ShardReader(d / "shards", "train").read(window * T, T))[None]
    with torch.no_grad():
        z = t.model(x)[0, :, : t.tokenizer.vocab_size].double()
    return torch.log_softmax(z, -1).numpy()


def test_round_trip_alignment_and_parts(setup, tmp_path):
    d, tok = setup
    out = tmp_path / "cache"
    m = write_teacher_cache(d / "teacher", d / "shards", out, k=8, seq_len=T, batch_size=3, windows_per_part=7,
                            device="cpu", progress=False)
    reader = ShardReader(d / "shards", "train")
    assert m["windows"] == (len(reader) - 1) // T and m["parts"] == -(-m["windows"] // 7) and m["complete"]
    assert m["tokenizer_hash"] == tok.hash and m["k"] == 8 and m["id_dtype"] == "uint16"
    # 8 ids (uint16) + 8 log-probs (fp16) + the leftover (fp16) per position, plus small headers.
    assert 34 <= m["bytes_per_token"] < 40
    cache = TeacherCache(out)
    for w in (0, 6, 7, m["windows"] - 1):  # first, last of part 0, first of part 1, very last (short part)
        ids, lp = cache.lookup(np.array([w * T]), T)
        ref = teacher_logprobs64(d, w)
        top = np.argsort(-ref, -1)[:, :8]
        np.testing.assert_array_equal(ids[0].numpy(), top)  # sorted descending, aligned with the window
        np.testing.assert_allclose(lp[0].numpy(), np.take_along_axis(ref, top, -1), rtol=2e-3, atol=2e-3)
        rest = 1 - np.exp(np.take_along_axis(ref, top, -1)).sum(-1)
        assert rest.max() > 1e-4  # the rest bucket matters in this test
        np.testing.assert_allclose(1 - lp[0].double().exp().sum(-1).numpy(), rest, rtol=3e-3, atol=1e-6)
    # A row that starts inside part 0 and ends in part 1 reads across the file boundary.
    a_ids, a_lp = cache.lookup(np.array([6 * T + 5]), T)
    b0, b1 = cache.lookup(np.array([6 * T, 7 * T]), T)
    np.testing.assert_array_equal(a_ids[0], torch.cat([b0[0, 5:], b0[1, :5]]))
    np.testing.assert_array_equal(a_lp[0], torch.cat([b1[0, 5:], b1[1, :5]]))
    with pytest.raises(VnminiError, match="outside the cache"):
        cache.lookup(np.array([m["positions"] - 3]), T)


def test_resume_skips_finished_parts_and_refuses_other_settings(setup, tmp_path):
    d, _ = setup
    out = tmp_path / "cache"
    kw = dict(k=4, seq_len=T, windows_per_part=5, device="cpu", progress=False, max_windows=14)
    m = write_teacher_cache(d / "teacher", d / "shards", out, **kw)
    assert m["windows"] == 14 and m["parts"] == 3
    first = load_file(str(out / PART.format(1)))
    (out / PART.format(1)).unlink()
    os.utime(out / PART.format(0), (1, 1))  # a rerun must leave finished parts alone
    # Simulate the crash: the manifest is not complete yet, so readers refuse.
    mf = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**mf, "complete": False}))
    with pytest.raises(VnminiError, match="unfinished"):
        TeacherCache(out)
    write_teacher_cache(d / "teacher", d / "shards", out, **kw)
    again = load_file(str(out / PART.format(1)))  # same tensors (header key order is not stable)
    assert again.keys() == first.keys() and all(np.array_equal(again[n], first[n]) for n in first)
    assert (out / PART.format(0)).stat().st_mtime == 1
    assert TeacherCache(out).windows == 14
    cost = json.loads((out / "manifest.json").read_text())["elapsed_s"]
    write_teacher_cache(d / "teacher", d / "shards", out, **kw)  # nothing left to do: the cost stays on record
    assert json.loads((out / "manifest.json").read_text())["elapsed_s"] == cost
    with pytest.raises(VnminiError, match=r"other settings \(k\)"):
        write_teacher_cache(d / "teacher", d / "shards", out, **{**kw, "k": 5})
    (out / PART.format(2)).write_bytes(b"garbage")
    with pytest.raises(VnminiError, match="damaged"):
        TeacherCache(out).lookup(np.array([12 * T]), T)


def test_a_longer_max_windows_extends_the_cache_keeping_whole_parts(setup, tmp_path):
    """Caching a big teacher takes an hour: raising --max-windows must add windows, not start over."""
    d, _ = setup
    full, grown = tmp_path / "full", tmp_path / "grown"
    kw = dict(k=4, seq_len=T, windows_per_part=5, device="cpu", progress=False)
    write_teacher_cache(d / "teacher", d / "shards", full, **kw, max_windows=17)
    write_teacher_cache(d / "teacher", d / "shards", grown, **kw, max_windows=7)  # parts: 5 + 2 windows
    os.utime(grown / PART.format(0), (1, 1))
    m = write_teacher_cache(d / "teacher", d / "shards", grown, **kw, max_windows=17)
    assert m["windows"] == 17 and m["parts"] == 4 and m["complete"]
    assert (grown / PART.format(0)).stat().st_mtime == 1  # whole part kept, not recomputed
    ref, got = TeacherCache(full), TeacherCache(grown)
    pos = np.arange(0, 17 * T - T + 1, 3)
    for a, b in zip(ref.lookup(pos, T), got.lookup(pos, T), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    m = write_teacher_cache(d / "teacher", d / "shards", grown, **kw, max_windows=6)  # shrink: 5 + 1
    assert m["parts"] == 2 and sorted(x.name for x in grown.glob("part_*")) == [PART.format(0), PART.format(1)]
    assert (grown / PART.format(0)).stat().st_mtime == 1
    np.testing.assert_array_equal(TeacherCache(grown).lookup(np.array([5 * T]), T)[0].numpy(),
                                  ref.lookup(np.array([5 * T]), T)[0].numpy())


def test_sparse_equals_dense_through_a_full_vocab_cache(setup, tmp_path):
    d, tok = setup
    v = tok.vocab_size
    write_teacher_cache(d / "teacher", d / "shards", tmp_path / "c", k=v, seq_len=T, temperature=2.0, device="cpu",
                        progress=False, max_windows=4)
    cache = TeacherCache(tmp_path / "c")
    ids, lp = cache.lookup(np.array([0, 3 * T]), T)
    t = load_teacher(d / "teacher", device="cpu")
    x = torch.from_numpy(np.stack([ShardReader(d / "shards", "train").read(w * T, T) for w in (0, 3)]))
    tl = t.logits(x, v).reshape(-1, v)
    s = torch.randn(2 * T, v, generator=torch.Generator().manual_seed(1)) * 3
    for kind in ("forward", "reverse", "skew"):
        dense = float(kd_loss(s, tl, kind, 2.0, inplace=False))
        sparse = float(sparse_kd_loss(s, ids.reshape(2 * T, v), lp.reshape(2 * T, v), kind, 2.0, inplace=False))
        assert sparse == pytest.approx(dense, rel=3e-3), kind


def test_vocabulary_mismatch_is_refused(setup, tmp_path, tiny_checkpoint, tiny_tokenizer, cli):
    d, tok = setup
    with pytest.raises(VnminiError) as e:
        write_teacher_cache(tiny_checkpoint, d / "shards", tmp_path / "c", k=4, seq_len=T, device="cpu", progress=False)
    msg = str(e.value)
    for part in (f"{tiny_tokenizer.vocab_size} tokens", tiny_tokenizer.hash, f"{tok.vocab_size} tokens", tok.hash,
                 "vnmini teacher generate", str(tiny_checkpoint)):
        assert part in msg
    assert not (tmp_path / "c").exists()
    code, _, err = cli("teacher", "cache", "--teacher", tiny_checkpoint, "--data", d / "shards",
                       "--out", tmp_path / "c", "--device", "cpu", "--no-progress")
    assert code == 2 and err.startswith("error: vocabulary mismatch") and err.count("\n") == 1
    code, _, err = cli("distill", "--teacher", tiny_checkpoint, "--data", d / "shards", "--tokenizer", d / "tok",
                       "--out", tmp_path / "r", "--device", "cpu", "--no-progress")
    assert code == 2 and "vocabulary mismatch" in err and "sequence-level" in err


def test_a_teacher_retrained_in_place_does_not_reuse_the_old_cache(setup, tmp_path):
    """Found in a quickstart rerun: same folder, same shape, new weights; the old cache was silently kept."""
    import shutil

    from vnmini.checkpoint import load_checkpoint, save_checkpoint

    d, tok = setup
    teacher = tmp_path / "teacher"
    shutil.copytree(d / "teacher", teacher)
    kw = dict(k=4, seq_len=T, device="cpu", progress=False, max_windows=4)
    out = tmp_path / "cache"
    write_teacher_cache(teacher, d / "shards", out, **kw)
    old = load_file(str(out / PART.format(0)))["logprobs"]
    model = load_checkpoint(teacher).model
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # other weights, same shape and path
    save_checkpoint(model, teacher, tokenizer=tok)
    with pytest.raises(VnminiError, match=r"other settings \(teacher\)"):
        write_teacher_cache(teacher, d / "shards", out, **kw)
    write_teacher_cache(teacher, d / "shards", out, force=True, **kw)
    new = load_file(str(out / PART.format(0)))["logprobs"]
    assert not np.array_equal(new, old)
