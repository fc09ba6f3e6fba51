"""GGUF export checked by llama-cpp-python (the oracle): every direct quant, K-quants on a
width-256 model, tied/untied, GQA, odd widths, a padded vocab, a qwen2 pre-tokenizer, and a
briefly trained model's bits per byte. Also: Q8_0/Q4_0 blocks bit-exact with gguf.quants."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE

from vnmini.checkpoint import save_checkpoint
from vnmini.export import describe_gguf, to_gguf
from vnmini.export.gguf_writer import quantize_blocks, tensor_types
from vnmini.models import LlamaForCausalLM, ModelConfig

TEXT = VI_SAMPLE + "Điều 3. Nguyên tắc cơ bản của pháp luật dân sự.\n  Hai   dấu cách, số 12.345 và 🐱.\n"


def make_ckpt(path, tok, seed=0, std=0.08, **kw):
    base = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                tie_word_embeddings=False)
    base.update(kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(ModelConfig(**base))
    # Larger-than-init weights make the logits spread out, so quantization error is visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, std)
    return save_checkpoint(model, path, tokenizer=tok, provenance={"steps": 0, "note": "test"})


def dequantized_model(path, model):
    """A copy of ``model`` whose weights are the GGUF's, dequantized and un-permuted."""
    import copy

    from vnmini.export.gguf_writer import gguf_tensors

    m = copy.deepcopy(model)
    cfg = m.config
    r = gguf.GGUFReader(str(path))
    file = {t.name: t for t in r.tensors}
    hf_names = {}
    sd = {k: v for k, v in m.state_dict().items()}
    # Map GGUF names back through the writer's own list (same order, same shapes).
    ours = [n for n, _, _ in gguf_tensors(m)]
    hf = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        hf += [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
               p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight",
               p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
    hf += ["model.norm.weight"] + ([] if cfg.tie_word_embeddings else ["lm_head.weight"])
    hf_names = dict(zip(ours, hf, strict=True))
    for name, t in file.items():
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(sd[hf_names[name]].shape)
        w = torch.from_numpy(np.array(w, dtype=np.float32))
        n_head = {".attn_q.": cfg.num_attention_heads, ".attn_k.": cfg.num_key_value_heads}
        for key, nh in n_head.items():
            if key in name:  # inverse of the rotary permutation
                w = w.reshape(nh, w.shape[0] // nh // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        sd[hf_names[name]] = w
    m.load_state_dict(sd, strict=False)
    if cfg.tie_word_embeddings:
        m.lm_head.weight = m.model.embed_tokens.weight
    return m.eval()


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0])
def test_block_quantizer_bit_exact_with_gguf(qtype):
    rng = np.random.default_rng(1)
    for rows, cols in [(1, 32), (7, 96), (33, 256), (5, 64)]:
        w = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 30)).astype(np.float32)
        w[0, :32] = 0.0  # an all-zero block (scale 0)
        w[-1, -5:] = [1e-8, -1e-8, 3.0, -3.0, 0.5]
        got = quantize_blocks(w, qtype)
        ref = gguf.quants.quantize(w, qtype)
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert np.array_equal(got, ref)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory, tiny_tokenizer):
    return make_ckpt(tmp_path_factory.mktemp("gguf") / "ckpt", tiny_tokenizer)


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_direct_quants_verified(base_ckpt, tmp_path, quant):
    res = to_gguf(base_ckpt, tmp_path / f"m-{quant}.gguf", quant=quant, verify_text=TEXT)
    v = res.verify
    assert v["passed"], v
    assert v["tokenization"]["equal"] and v["tokenization"]["adds_bos"]
    assert v["chat"]["equal"] and v["chat"]["chat_format"] == "chat_template.default"
    lg = v["logits"]
    main_type = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q8_0": "q8_0", "q4_0": "q4_0"}[quant]
    types = tensor_types(res.path)
    assert types["blk.0.attn_norm.weight"] == "f32" and types["output_norm.weight"] == "f32"
    assert types["blk.1.ffn_down.weight"] == main_type
    assert not res.fallbacks
    tol = {"f32": (1e-3, 1e-9), "f16": (5e-3, 1e-5), "bf16": (3e-2, 1e-3), "q8_0": (0.1, 1e-3),
           "q4_0": (0.7, 5e-2)}[quant]
    assert lg["max_rel_err"] <= tol[0], lg
    assert lg["kl_mean"] <= tol[1], lg
    assert lg["top1_agreement"] >= {"f32": 0.999, "q4_0": 0.4}.get(quant, 0.8), lg
    if quant == "q4_0":
        assert types["output.weight"] == "q8_0"  # the head keeps more bits
    if quant in ("q8_0", "q4_0"):
        # The quantization error is the weights' alone: torch on the file's dequantized
        # weights agrees with llama.cpp far better than with the original weights.
        from vnmini.checkpoint import load_checkpoint
        from vnmini.export.gguf_verify import compare_logits, llama_logits
        from vnmini.runtime.gguf_backend import open_llama

        ckpt = load_checkpoint(base_ckpt)
        ids = ckpt.tokenizer.encode(TEXT, add_bos=True)[:100]
        deq = dequantized_model(res.path, ckpt.model)
        llm = open_llama(res.path, n_ctx=128)
        got = llama_logits(llm, ids)
        llm.close()
        with torch.no_grad():
            vs_deq = compare_logits(deq(torch.tensor([ids]))[0].numpy(), got)
            vs_orig = compare_logits(ckpt.model(torch.tensor([ids]))[0].numpy(), got)
        assert vs_deq["kl_mean"] < vs_orig["kl_mean"] / (10 if quant == "q4_0" else 1.5), (vs_deq, vs_orig)
        assert vs_deq["top1_agreement"] >= 0.97
    assert abs(v["quality"]["dbpb_rel"]) < (1e-6 if quant == "f32" else 0.05)
    for p in res.report_paths:
        assert p.is_file() and p.parent == tmp_path
    assert "PASSED" in res.report_paths[0].read_text(encoding="utf-8")


def test_tied_odd_widths_padded_vocab_fall_back(tmp_path, tiny_tokenizer):
    # head_dim 8, rows of 48 and 80 (not multiples of 32), 7 unused vocab rows, tied head.
    ck = make_ckpt(tmp_path / "odd", tiny_tokenizer, seed=3, vocab_size=tiny_tokenizer.vocab_size + 7,
                   hidden_size=48, intermediate_size=80, num_attention_heads=6, num_key_value_heads=2,
                   tie_word_embeddings=True)
    for quant in ("f32", "q8_0"):
        res = to_gguf(ck, tmp_path / f"odd-{quant}.gguf", quant=quant, verify_text=TEXT)
        assert res.verify["passed"], res.verify
        types = tensor_types(res.path)
        assert "output.weight" not in types
        if quant == "q8_0":
            assert types["blk.0.attn_q.weight"] == "f16" and types["blk.0.ffn_down.weight"] == "f16"
            assert len(res.fallbacks) == 15 and "not a multiple of 32" in res.fallbacks[0]
            assert res.verify["logits"]["max_rel_err"] < 5e-3
        else:
            assert res.verify["logits"]["max_rel_err"] <= 1e-3
    r = gguf.GGUFReader(str(tmp_path / "odd-f32.gguf"))
    ttypes = list(r.fields["tokenizer.ggml.token_type"].contents())
    assert ttypes[-7:] == [gguf.TokenType.UNUSED] * 7
    assert ttypes[tiny_tokenizer.bos_id] == gguf.TokenType.CONTROL


def test_head_dim_not_hidden_over_heads(tmp_path, tiny_tokenizer):
    ck = make_ckpt(tmp_path / "hd", tiny_tokenizer, hidden_size=64, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=48, intermediate_size=96)
    res = to_gguf(ck, tmp_path / "hd.gguf", quant="f32", verify_text=TEXT)
    assert res.verify["passed"] and res.verify["logits"]["max_rel_err"] <= 1e-3


def test_k_quants_on_width_256(tmp_path, tiny_tokenizer):
    ck = make_ckpt(tmp_path / "w256", tiny_tokenizer, std=0.04, hidden_size=256, intermediate_size=512,
                   num_attention_heads=4, num_key_value_heads=2)
    kl, top1 = {}, {}
    for quant, family in (("q4_k_m", "q4_k"), ("q5_k_m", "q5_k"), ("q6_k", "q6_k")):
        res = to_gguf(ck, tmp_path / f"k-{quant}.gguf", quant=quant, verify_text=TEXT)
        v = res.verify
        assert v["passed"], v
        assert not res.fallbacks
        assert res.tensor_types.get(family, 0) >= 5, res.tensor_types
        assert describe_gguf(res.path)["quant"] == quant
        kl[quant] = v["logits"]["kl_mean"]
        top1[quant] = v["logits"]["top1_agreement"]
    assert kl["q6_k"] < kl["q5_k_m"] < kl["q4_k_m"], kl
    assert top1["q6_k"] >= 0.8 and top1["q4_k_m"] >= 0.5, top1
    # llama.cpp's own K-quant mix, dequantized by gguf-py, is what llama.cpp runs.
    from vnmini.checkpoint import load_checkpoint
    from vnmini.export.gguf_verify import compare_logits, llama_logits
    from vnmini.runtime.gguf_backend import open_llama

    ckpt = load_checkpoint(ck)
    ids = ckpt.tokenizer.encode(TEXT, add_bos=True)[:100]
    path = tmp_path / "k-q4_k_m.gguf"
    llm = open_llama(path, n_ctx=128)
    got = llama_logits(llm, ids)
    llm.close()
    with torch.no_grad():
        vs_deq = compare_logits(dequantized_model(path, ckpt.model)(torch.tensor([ids]))[0].numpy(), got)
    assert vs_deq["kl_mean"] < kl["q4_k_m"] / 10 and vs_deq["top1_agreement"] >= 0.9, (vs_deq, kl)
    assert not list(tmp_path.glob(".*tmp"))  # the f32 intermediate is gone


def test_k_quant_on_odd_widths_uses_llama_cpp_fallback(tmp_path, tiny_tokenizer):
    ck = make_ckpt(tmp_path / "odd", tiny_tokenizer, hidden_size=48, intermediate_size=80,
                   num_attention_heads=6, num_key_value_heads=2)
    res = to_gguf(ck, tmp_path / "odd-q4_k_m.gguf", quant="q4_k_m", verify_text=TEXT)
    assert res.verify["passed"]
    assert res.fallbacks and all("fallback" in f for f in res.fallbacks)
    assert "q4_k" not in res.tensor_types


def test_qwen2_pre_tokenizer_round_trip(tmp_path):
    from tokenizers import Tokenizer, decoders, models, trainers

    from vnmini.text.pretokenizers import build_pre_tokenizer
    from vnmini.text.specials import SPECIAL_TOKENS
    from vnmini.text.tokenizer import VnTokenizer

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = build_pre_tokenizer("qwen2")
    hf.decoder = decoders.ByteLevel()
    from tokenizers import pre_tokenizers

    hf.train_from_iterator([VI_SAMPLE] * 3, trainer=trainers.BpeTrainer(
        vocab_size=380, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = VnTokenizer(hf, pre_tokenizer_name="qwen2")
    ck = make_ckpt(tmp_path / "q", tok)
    res = to_gguf(ck, tmp_path / "q.gguf", quant="f16", verify_text=TEXT)
    assert res.verify["passed"] and res.verify["tokenization"]["equal"]
    r = gguf.GGUFReader(str(res.path))
    assert r.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    from vnmini.text.gguf_vocab import tokenizer_from_gguf

    assert tokenizer_from_gguf(r).hash == tok.hash


def test_trained_model_bpb_and_metadata(tmp_path, tiny_tokenizer):
    """A briefly trained model: its bpb drops far below random, q8_0 keeps it within 1 %."""
    tok = tiny_tokenizer
    ids = torch.tensor(tok.encode(TEXT * 2, add_bos=True))
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        starts = torch.randint(0, len(ids) - 49, (8,), generator=g)
        x = torch.stack([ids[s: s + 49] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    ck = save_checkpoint(model, tmp_path / "trained", tokenizer=tok, provenance={"steps": 40, "license": "mit"})
    res = to_gguf(ck, tmp_path / "t.gguf", quant="q8_0", verify_text=TEXT)
    q = res.verify["quality"]
    assert q["bpb_torch"] < 3.0, q  # random init is ~5.2 bits per byte here
    assert abs(q["dbpb_rel"]) <= 0.01, q
    d = describe_gguf(res.path)
    assert d["quant"] == "q8_0" and d["architecture"] == "llama" and d["tied_embeddings"] is True
    assert d["provenance.steps"] == 40 and d["license"] == "mit" and d["chat_template"] == "yes"
    assert d["parameters"] == model.num_parameters()
    r = gguf.GGUFReader(str(res.path))
    assert r.fields["tokenizer.chat_template"].contents() == tok.chat_template
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert r.fields["tokenizer.ggml.eot_token_id"].contents() == tok.eot_id
