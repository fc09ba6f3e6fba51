"""Logit distillation across vocabularies: a student whose tokenizer was adopted from a bigger
teacher's (``vnmini tokenizer adopt``) learns from that teacher's logits, online or from a
cache, with the teacher as a torch checkpoint (a random HF Qwen2 folder) or a GGUF.

Oracles: the gathered log-probs and the k+1-bucket KL against float64 torch over the
teacher's full vocabulary; the GGUF teacher (llama.cpp) against the torch teacher it was
exported from.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import LAW_LINES
from safetensors.numpy import load_file

from vnmini.errors import VnminiError

T = 16


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Trimmed GGUF teachers go to the test's own cache, not the user's."""
    monkeypatch.setenv("VNMINI_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from test_open_world import save_foreign

    from vnmini.data.shards import prepare_shards
    from vnmini.export import to_gguf
    from vnmini.text.adopt import adopt_tokenizer

    d = tmp_path_factory.mktemp("xd")
    save_foreign(d / "qwen", "qwen2", "qwen2")
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in LAW_LINES), "utf-8")
    from tokenizers import Tokenizer

    teacher_vocab = Tokenizer.from_file(str(d / "qwen" / "tokenizer.json")).get_vocab_size()
    res = adopt_tokenizer(d / "qwen", [d / "c.jsonl"], vocab_size=teacher_vocab - 60, out=d / "tok", progress=False)
    prepare_shards([d / "c.jsonl"], res.tokenizer, d / "shards", val_fraction=0.1, shard_tokens=1024, progress=False)
    to_gguf(d / "qwen", d / "qwen.gguf", quant="f32", verify=False)
    return d


def _student_tok(d):
    from vnmini.text.tokenizer import VnTokenizer

    return VnTokenizer.load(d / "tok")


def test_gathered_kl_equals_a_float64_reference_over_the_full_teacher_vocabulary(world):
    from vnmini.kernels import sparse_kd_loss
    from vnmini.training.mapped_teacher import open_mapped_teacher
    from vnmini.training.teacher_cache import load_teacher

    tok = _student_tok(world)
    full = open_mapped_teacher(world / "qwen", tok, "full", device="cpu")
    mapped = open_mapped_teacher(world / "qwen", tok, "mapped", device="cpu")
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, tok.vocab_size, (2, 13), generator=g)
    lp = full.student_logprobs(x, temperature=1.5)
    # float64 reference: the teacher's own softmax over all its ids, then gathered
    t64 = load_teacher(world / "qwen", device="cpu", dtype=torch.float64)
    ids = full.id_map[x]
    if full.bos_id is not None:
        ids = torch.cat([torch.full_like(ids[:, :1], full.bos_id), ids], 1)
    z = t64.model(ids)[:, -x.shape[1]:, : full.teacher_vocab] / 1.5
    ref = torch.log_softmax(z, -1)[..., full.id_map]
    assert torch.allclose(lp.double(), ref, atol=2e-5), float((lp.double() - ref).abs().max())
    outside = 1 - ref.exp().sum(-1)
    assert float(outside.min()) > 1e-3  # the student really can't say some of the teacher's tokens
    # mapped mode = the same teacher renormalized over the student's ids
    lpm = mapped.student_logprobs(x, temperature=1.5)
    assert torch.allclose(lpm.double(), ref - torch.logsumexp(ref, -1, keepdim=True), atol=2e-5)

    k = 8
    s = torch.randn(x.numel(), tok.vocab_size, generator=g, dtype=torch.float64) * 2
    top_lp, top_ids = lp.reshape(-1, tok.vocab_size).topk(k, -1)
    for kind in ("forward", "reverse"):
        got = float(sparse_kd_loss(s.float(), top_ids, top_lp, kind=kind, temperature=1.5, backend="auto"))
        p_all = ref.reshape(-1, tok.vocab_size).exp()
        p = torch.cat([p_all.gather(-1, top_ids), (1 - p_all.gather(-1, top_ids).sum(-1, keepdim=True))], -1)
        q_all = torch.softmax(s / 1.5, -1)
        q = torch.cat([q_all.gather(-1, top_ids), (1 - q_all.gather(-1, top_ids).sum(-1, keepdim=True))], -1)
        a, b = (p, q) if kind == "forward" else (q, p)
        want = float((a * (a / b).log()).sum(-1).mean() * 1.5**2)
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (kind, got, want)


def test_gguf_teacher_cache_matches_the_torch_teacher_and_distills(world, tmp_path, cli):
    from vnmini.training.teacher_cache import TeacherCache, write_teacher_cache

    d = world
    kw = dict(k=8, seq_len=T, max_windows=6, device="cpu", progress=False, windows_per_part=4)
    mt = write_teacher_cache(d / "qwen", d / "shards", tmp_path / "c-torch", **kw)
    mg = write_teacher_cache(d / "qwen.gguf", d / "shards", tmp_path / "c-gguf", **kw)
    mm = write_teacher_cache(d / "qwen.gguf", d / "shards", tmp_path / "c-mapped", vocab_mode="mapped", **kw)
    assert mg["teacher"]["backend"] == "gguf" and mm["teacher"]["vocab_mode"] == "mapped"
    assert 0 < mt["teacher_mass_outside_student_vocab"] < 1
    assert abs(mg["teacher_mass_outside_student_vocab"] - mt["teacher_mass_outside_student_vocab"]) < 1e-2
    ct, cg, cm = (TeacherCache(tmp_path / n) for n in ("c-torch", "c-gguf", "c-mapped"))
    it, lt, rt = ct.read(0, ct.positions)
    ig, lg, rg = cg.read(0, cg.positions)
    im, lm, rm = cm.read(0, cm.positions)
    assert (it[:, 0] == ig[:, 0]).mean() > 0.97  # llama.cpp's f16 KV cache may swap near-ties
    same = it[:, 0] == ig[:, 0]
    assert np.abs(lt[same, 0].astype(np.float64) - lg[same, 0]).max() < 2e-2
    assert np.abs(np.exp(rt.astype(np.float64)) - np.exp(rg.astype(np.float64))).max() < 2e-2
    assert (im[:, 0] == ig[:, 0]).mean() > 0.97 and (np.exp(rm.astype(np.float64)) < np.exp(rg.astype(np.float64))
                                                     + 1e-3).all()  # mapped drops the outside mass
    # the cache distills through the real entry point
    out = tmp_path / "kd"
    code, so, se = cli("distill", "--teacher-cache", str(tmp_path / "c-gguf"), "--data", str(d / "shards"),
                       "--student-preset", "micro", "-o", str(out), "--max-steps", "2", "--micro-batch", "2",
                       "--global-batch-tokens", str(4 * T), "--eval-tokens", "64", "--sample-tokens", "0",
                       "--no-progress", "--device", "cpu", "--warmup-steps", "1")
    assert code == 0, se
    assert (out / "final" / "teacher_map.json").is_file()  # the student keeps its map downstream


def _kw(d, out, **extra):
    return {**dict(data=str(d / "shards"), preset="micro", out=str(out), seq_len=T, micro_batch=2,
                   global_batch_tokens=4 * T, max_steps=4, warmup_steps=1, eval_every=2, eval_tokens=64, save_every=2,
                   sample_tokens=0, progress=False, device="cpu"), **extra}


def test_online_kd_from_a_superset_hf_qwen2_teacher_resumes_exactly(world, tmp_path):
    from vnmini.training.distill import distill

    d = world
    src = dict(teacher=str(d / "qwen"), kd="forward", temperature=1.0, teacher_top_k=16, alpha=0.8)
    a = distill(**src, **_kw(d, tmp_path / "a"))
    assert a["steps"] == 4 and np.isfinite(a["eval_bpb"]) and a["distill"]["teacher"]["vocab_mode"] == "full"
    rec = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 for r in rec if "loss" in r)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "step_000002", tmp_path / "b" / "step_000002")
    b = distill(**src, **_kw(d, tmp_path / "b"), resume=True)
    wa = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    assert b["eval_bpb"] == a["eval_bpb"] and all(np.array_equal(wa[n], wb[n]) for n in wa)
    # a GGUF teacher online, mapped vocabulary
    g = distill(teacher=str(d / "qwen.gguf"), teacher_vocab="mapped", **_kw(d, tmp_path / "g", max_steps=2))
    assert g["steps"] == 2 and g["distill"]["teacher"]["backend"] == "gguf"


def test_a_quantized_gguf_teacher_runs_dequantized_and_matches_transformers(world):
    """llama.cpp rounds activations to 8 bits against quantized weights; the float32 rewrite computes the
    weights' own function, which transformers' reading of the same GGUF (float64 here) is the oracle of."""
    from transformers import AutoModelForCausalLM

    from vnmini.export import to_gguf
    from vnmini.training.mapped_teacher import GgufMappedTeacher

    d = world
    to_gguf(d / "qwen", d / "q8.gguf", quant="q8_0", verify=False)
    tok = _student_tok(d)
    rng = np.random.default_rng(7)
    ids = torch.from_numpy(rng.integers(0, tok.vocab_size, size=(2, 13)))
    idm = torch.from_numpy(np.asarray(tok.teacher_map.student_to_teacher, dtype=np.int64))
    hf = AutoModelForCausalLM.from_pretrained(str(d), gguf_file="q8.gguf", dtype=torch.float64).eval()
    with torch.no_grad():
        z = hf(idm[ids]).logits.double()
    ref = z[..., idm] - torch.logsumexp(z, -1, keepdim=True)
    auto = GgufMappedTeacher(d / "q8.gguf", tok, "full", n_ctx=32)
    packed = GgufMappedTeacher(d / "q8.gguf", tok, "full", n_ctx=32, f32_weights=False)
    assert auto.f32_weights and auto.run_path != d / "q8.gguf" and auto.describe()["f32_weights"]
    err_f32 = (auto.student_logprobs(ids).double() - ref).abs().max().item()
    err_packed = (packed.student_logprobs(ids).double() - ref).abs().max().item()
    assert err_f32 < 2e-4 and err_packed > 3 * err_f32, (err_f32, err_packed)
    mapped = GgufMappedTeacher(d / "q8.gguf", tok, "mapped", n_ctx=32)
    ref_m = torch.log_softmax(z[..., idm], -1)
    assert mapped.f32_weights and (mapped.student_logprobs(ids).double() - ref_m).abs().max().item() < 2e-4
    # a float32 teacher is run as it is
    assert GgufMappedTeacher(d / "qwen.gguf", tok, "full", n_ctx=32).run_path == d / "qwen.gguf"


def test_a_vocabulary_that_is_not_a_subset_is_refused(world, tmp_path, law_corpus, cli):
    d = world
    law_corpus(tmp_path)  # its own 300-token BPE: not adopted from the Qwen2 teacher
    for teacher in (d / "qwen", d / "qwen.gguf"):
        code, _, se = cli("teacher", "cache", "--teacher", str(teacher), "--data", str(tmp_path / "shards"),
                          "-o", str(tmp_path / "c"), "--seq-len", str(T), "--tokenizer", str(tmp_path / "tok"))
        assert code == 2 and "vocabulary mismatch" in se and "tokenizer adopt" in se and str(teacher) in se, se
        assert "Traceback" not in se and not (tmp_path / "c" / "part_00000.safetensors").exists()
    # a map that points at other teacher tokens (adopted from another vocabulary) is refused too
    tampered = tmp_path / "tok2"
    shutil.copytree(d / "tok", tampered)
    m = json.loads((tampered / "teacher_map.json").read_text())
    ids = m["student_to_teacher"]
    i = next(i for i in range(len(ids) - 1) if ids[i] + 1 < ids[i + 1])
    ids[i] += 1  # still a valid, increasing map, but the teacher's token there is another string
    (tampered / "teacher_map.json").write_text(json.dumps(m))
    from vnmini.text.tokenizer import VnTokenizer
    from vnmini.training.mapped_teacher import open_mapped_teacher

    with pytest.raises(VnminiError, match="adopted from another vocabulary"):
        open_mapped_teacher(d / "qwen.gguf", VnTokenizer.load(tampered), "full")


def _gram(z: np.ndarray) -> np.ndarray:
    g = z.astype(np.float64) @ z.astype(np.float64).T
    return g / np.linalg.norm(g)


def test_student_embeddings_start_from_the_teachers_rows_projected_by_pca(world, tmp_path, cli):
    """``--init-embeddings``: the teacher's rows as transformers reads them (the HF folder, and a q8_0 GGUF of it),
    projected to the best rank-k geometry (float64 torch SVD as the oracle), in a fresh model only."""
    from transformers import AutoModelForCausalLM

    from vnmini.export import to_gguf
    from vnmini.training.config import TrainConfig
    from vnmini.training.pretrain import make_model
    from vnmini.training.teacher_embed import project_rows, teacher_embedding_rows

    d = world
    tok = _student_tok(d)
    idm = np.asarray(tok.teacher_map.student_to_teacher, dtype=np.int64)
    hf = AutoModelForCausalLM.from_pretrained(str(d / "qwen"), dtype=torch.float64)
    rows = teacher_embedding_rows(d / "qwen", tok)
    np.testing.assert_allclose(rows, hf.get_input_embeddings().weight.detach().numpy()[idm], rtol=0, atol=1e-6)
    to_gguf(d / "qwen", d / "q8e.gguf", quant="q8_0", verify=False)
    hg = AutoModelForCausalLM.from_pretrained(str(d), gguf_file="q8e.gguf", dtype=torch.float64)
    rows_q = teacher_embedding_rows(d / "q8e.gguf", tok)
    np.testing.assert_allclose(rows_q, hg.get_input_embeddings().weight.detach().numpy()[idm], rtol=0, atol=1e-6)
    assert 0 < np.abs(rows_q - rows).max() < 0.05  # quantized, yet the same rows

    x = torch.from_numpy(rows).double()
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    for k in (7, 64, 100):  # narrower than the teacher, as wide, wider (all of its 64 directions)
        z = project_rows(rows, k, rms=0.02)
        c = min(k, 64)
        assert z.shape == (tok.vocab_size, c) and abs(np.sqrt(np.mean(z.astype(np.float64) ** 2)) - 0.02) < 1e-6
        best = (u[:, :c] * s[:c]).numpy()
        np.testing.assert_allclose(_gram(z), _gram(best), rtol=0, atol=1e-5)

    cfg = TrainConfig(data=str(d / "shards"), preset="micro", seed=3)  # micro is 128 wide: 64 teacher columns
    plain = make_model(cfg, tok).model.embed_tokens.weight.detach().numpy()
    model = make_model(cfg.replace(init_embeddings=str(d / "qwen")), tok)
    w = model.model.embed_tokens.weight.detach().numpy()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # the tied output too
    np.testing.assert_allclose(_gram(w[:, :64]), _gram(project_rows(rows, 64, 1.0)), rtol=0, atol=1e-5)
    assert np.array_equal(w[:, 64:], plain[:, 64:])
    np.testing.assert_allclose(np.sqrt(np.mean(w[:, :64] ** 2)), np.sqrt(np.mean(plain ** 2)), rtol=1e-4)

    base = ["train", "--data", d / "shards", "--preset", "micro", "--seq-len", T, "--micro-batch", 2,
            "--global-batch-tokens", 4 * T, "--max-steps", 2, "--eval-every", 0, "--sample-tokens", 0,
            "--save-every", 0, "--device", "cpu", "--no-progress"]
    code, out, err = cli(*base, "--out", tmp_path / "r", "--init-embeddings", d / "q8e.gguf")
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "final" / "vnmini.json").read_text())["init_embeddings"]
    assert record["teacher"] == str(d / "q8e.gguf") and (record["teacher_width"], record["columns"]) == (64, 64)
    # A resumed run doesn't reread the teacher, yet its checkpoints keep where the rows came from.
    code, out, err = cli(*base, "--max-steps", 3, "--out", tmp_path / "r", "--init-embeddings",
                         tmp_path / "moved.gguf", "--resume")
    assert code == 0, err
    final = json.loads((tmp_path / "r" / "final" / "vnmini.json").read_text())
    assert final["step"] == 3 and final["init_embeddings"] == record
    code, _, err = cli(*base, "--out", tmp_path / "bad", "--init-embeddings", tmp_path / "nope.gguf")
    assert code == 2 and "--init-embeddings" in err and "nope.gguf" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    code, _, err = cli(*base, "--out", tmp_path / "both", "--init-embeddings", d / "qwen",
                       "--init-from", tmp_path / "r" / "final")
    assert code == 2 and "--init-embeddings" in err and "--init-from" in err
