"""The GGUF backend (llama.cpp through vnmini's Generator) against torch, the CLI verb,
``vnmini info`` on a GGUF, and every bad input → one line, exit 2, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE

from vnmini.checkpoint import load_checkpoint, save_checkpoint
from vnmini.export import to_gguf
from vnmini.models import LlamaForCausalLM, ModelConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("ggufrt")
    cfg = ModelConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(5)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)  # peaked distributions: greedy decoding is not a coin toss
    ck = save_checkpoint(model, d / "ckpt", tokenizer=tiny_tokenizer)
    res = to_gguf(ck, d / "m-f32.gguf", quant="f32", verify=False)
    return ck, res.path


def test_backend_matches_torch(exported):
    from vnmini.runtime.gguf_backend import GGUFGenerator
    from vnmini.runtime.torch_backend import TorchGenerator

    ck, path = exported
    ckpt = load_checkpoint(ck)
    gen = GGUFGenerator(path, f32_kv_cache=True)
    assert gen.tokenizer.hash == ckpt.tokenizer.hash and gen.context_length == 256
    tg = TorchGenerator(ckpt.model, ckpt.tokenizer)

    ids = ckpt.tokenizer.encode(VI_SAMPLE, add_bos=True)[:90]
    ref = tg.logits(ids)
    got = gen.logits(ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    # Only rows first.. (the rest skip llama.cpp's output layer): the same rows as the full pass.
    for first in (1, 37, len(ids) - 1):
        part = gen.logits(ids, first=first)
        assert part.shape == (len(ids) - first, ref.shape[1])
        assert np.abs(part - ref[first:]).max() / np.abs(ref).max() < 1e-4
        np.testing.assert_allclose(tg.logits(ids, first=first), ref[first:], rtol=0, atol=1e-5 * np.abs(ref).max())

    # Greedy text and chat (the second turn reuses the first turn's cached prefix).
    prompt = "Xin chào các bạn"
    assert (gen.complete(prompt, max_new_tokens=24, temperature=0)
            == tg.complete(prompt, max_new_tokens=24, temperature=0))
    assert gen.last_stats["ids"] == tg.last_stats["ids"] and gen.last_stats["backend"] == "gguf"
    msgs = [{"role": "user", "content": "Chào bạn, hoà bình nhé"}]
    a1 = gen.chat(msgs, max_new_tokens=12, temperature=0)
    b1 = tg.chat(msgs, max_new_tokens=12, temperature=0)
    assert a1 == b1
    msgs2 = msgs + [{"role": "assistant", "content": a1}, {"role": "user", "content": "Tiếp đi"}]
    crops = []
    real_truncate = gen._truncate
    gen._truncate = lambda n: crops.append((n, real_truncate(n))) or crops[-1][1]
    a2 = gen.chat(msgs2, max_new_tokens=12, temperature=0)
    assert crops and crops[0][0] > 10 and crops[0][1]  # the shared prefix stayed in llama.cpp's cache
    assert a2 == tg.chat(msgs2, max_new_tokens=12, temperature=0)
    assert gen.last_stats["ids"] == tg.last_stats["ids"]
    # logits() between generations drops the cache; the next generation is still right.
    gen.logits(ids[:10])
    assert gen.complete(prompt, max_new_tokens=8, temperature=0) == tg.complete(prompt, max_new_tokens=8, temperature=0)
    gen.close()


def test_truncate_then_feed_equals_fresh(exported):
    from vnmini.runtime.gguf_backend import GGUFGenerator

    ck, path = exported
    tok = load_checkpoint(ck).tokenizer
    gen = GGUFGenerator(path, f32_kv_cache=True)
    ids = tok.encode(VI_SAMPLE, add_bos=True)[:40]
    gen.reset()
    gen._feed(ids[:30])
    assert gen._truncate(12)
    cropped = gen._feed(ids[12:20])
    gen.reset()
    fresh = gen._feed(ids[:20])
    assert np.allclose(cropped, fresh, atol=1e-4 * np.abs(fresh).max())
    assert not gen._truncate(1000)


def test_runtime_load_and_info(exported, cli):
    import vnmini

    ck, path = exported
    gen = vnmini.load(path)
    assert gen.backend == "gguf"
    code, out, err = cli("info", path, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["kind"] == "gguf" and d["quant"] == "f32" and d["tied_embeddings"] is True
    assert d["layers"] == 2 and d["heads"] == "4 (kv 2)" and d["vocab_size"] == load_checkpoint(ck).config.vocab_size


def test_cli_export_with_verify_report(exported, cli, tmp_path):
    ck, _ = exported
    text = tmp_path / "heldout.txt"
    text.write_text(VI_SAMPLE, encoding="utf-8")
    out = tmp_path / "out" / "m-q8_0.gguf"
    code, stdout, err = cli("export", "gguf", ck, "-o", out, "--quant", "q8_0", "--verify-text", text)
    assert code == 0, err
    assert out.is_file() and "verify: PASSED" in stdout
    rep = json.loads(out.with_suffix(".verify.json").read_text(encoding="utf-8"))
    # embedding + 2 × 7 matrices
    assert rep["passed"] and rep["quant"] == "q8_0" and rep["export"]["tensor_types"]["q8_0"] == 15
    assert "| tokenization |" in out.with_suffix(".verify.md").read_text(encoding="utf-8")
    # Exists → refused without --force, untouched; --force --no-verify overwrites, and the old file's
    # report goes with it (a report never describes another file).
    before = out.read_bytes()
    code, _, err = cli("export", "gguf", ck, "-o", out, "--quant", "f16")
    assert code == 2 and "--force" in err and err.count("\n") == 1 and out.read_bytes() == before
    code, _, err = cli("export", "gguf", ck, "-o", out, "--quant", "f16", "--force", "--no-verify")
    assert code == 0, err
    assert out.read_bytes() != before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m-q8_0.gguf"]


def _one_line_error(cli, *args):
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs(cli, tmp_path, tiny_tokenizer, tiny_config):
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=tiny_tokenizer.vocab_size)
    good = save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "good", tokenizer=tiny_tokenizer)
    out = tmp_path / "o" / "m.gguf"

    no_tok = save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "notok")
    assert "tokenizer" in _one_line_error(cli, "export", "gguf", no_tok, "-o", out)

    arch = save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "arch", tokenizer=tiny_tokenizer)
    c = json.loads((arch / "config.json").read_text())
    c["model_type"], c["architectures"] = "gpt_neox", ["GPTNeoXForCausalLM"]
    (arch / "config.json").write_text(json.dumps(c))
    _one_line_error(cli, "export", "gguf", arch, "-o", out)

    small = save_checkpoint(LlamaForCausalLM(tiny_config(vocab_size=300)), tmp_path / "small")
    tiny_tokenizer.save(small)  # 400-token tokenizer on a 300-row model
    assert "tokenizer" in _one_line_error(cli, "export", "gguf", small, "-o", out)

    assert "--quant" in _one_line_error(cli, "export", "gguf", good, "-o", out, "--quant", "q3_k")
    assert ".gguf" in _one_line_error(cli, "export", "gguf", good, "-o", tmp_path / "m.bin")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    _one_line_error(cli, "export", "gguf", good, "-o", blocker / "m.gguf")
    _one_line_error(cli, "export", "gguf", tmp_path / "missing", "-o", out)
    _one_line_error(cli, "export", "gguf", good, "-o", out, "--verify-text", tmp_path / "nope.txt")
    assert not out.parent.exists()

    # A damaged GGUF is refused by info and by the backend with one line.
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    _one_line_error(cli, "info", bad)
    from vnmini.errors import VnminiError
    from vnmini.runtime.gguf_backend import GGUFGenerator

    with pytest.raises(VnminiError):
        GGUFGenerator(bad)


def test_crash_mid_write_leaves_nothing(tmp_path, tiny_tokenizer, tiny_config, monkeypatch):
    from vnmini.export import gguf_writer

    torch.manual_seed(0)
    ck = save_checkpoint(LlamaForCausalLM(tiny_config(vocab_size=tiny_tokenizer.vocab_size)), tmp_path / "ck",
                         tokenizer=tiny_tokenizer)
    real = gguf_writer._encode
    calls = []

    def boom(w, qtype):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk on fire")
        return real(w, qtype)

    monkeypatch.setattr(gguf_writer, "_encode", boom)
    out = tmp_path / "x" / "m.gguf"
    for quant in ("q8_0", "q4_k_m"):
        calls.clear()
        with pytest.raises(RuntimeError):
            to_gguf(ck, out, quant=quant, verify=False)
        assert list(out.parent.iterdir()) == []
