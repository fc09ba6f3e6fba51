"""Our decoder and checkpoints against transformers.LlamaForCausalLM (the oracle)."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
import transformers

from vnmini.checkpoint import load_checkpoint, save_checkpoint
from vnmini.models import LlamaForCausalLM, load_hf_model
from vnmini.runtime.torch_backend import TorchGenerator


def hf_model(cfg_kwargs: dict, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    conf = transformers.LlamaConfig(**cfg_kwargs)
    m = transformers.LlamaForCausalLM(conf).eval()
    # HF's init leaves norms at 1 and biases at 0; randomize everything so bugs can't hide.
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3 if p.dim() == 1 else 0.05)
            if p.dim() == 1:
                p.add_(1.0)
    return m


SHAPES = [
    dict(vocab_size=301, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
         num_key_value_heads=2, tie_word_embeddings=False),
    dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=4, tie_word_embeddings=True),
    dict(vocab_size=199, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
         num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, rope_theta=500000.0),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("shape", SHAPES, ids=["gqa-untied", "mha-tied", "mqa-bias"])
def test_hf_folder_loads_with_same_logits(tmp_path, shape):
    hf = hf_model(dict(shape, max_position_embeddings=128), seed=zlib.crc32(str(shape).encode()) % 1000)
    hf.save_pretrained(tmp_path)
    ours = load_hf_model(tmp_path)
    ids = torch.randint(0, shape["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_folder_loads(tmp_path, dtype):
    hf = hf_model(dict(SHAPES[0], max_position_embeddings=128), seed=3).to(dtype)
    hf.save_pretrained(tmp_path)
    ours = load_hf_model(tmp_path)  # upcast to fp32
    ids = torch.randint(0, 301, (1, 19))
    with torch.no_grad():
        ref = hf.float()(ids).logits
        got = ours(ids)
    assert rel_err(got, ref) <= 1e-4


def test_sharded_folder_loads(tmp_path):
    hf = hf_model(dict(SHAPES[0], max_position_embeddings=128), seed=4)
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = load_hf_model(tmp_path)
    ids = torch.randint(0, 301, (1, 11))
    with torch.no_grad():
        assert rel_err(ours(ids), hf(ids).logits) <= 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_vnmini_checkpoint_loads_in_transformers(tmp_path, tiny_config, tied):
    cfg = tiny_config(tie_word_embeddings=tied, vocab_size=263, hidden_size=56, num_attention_heads=7,
                      num_key_value_heads=7 if tied else 1)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.3)
    save_checkpoint(model, tmp_path / "ckpt", provenance={"test": True})
    cfg_json = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg_json["architectures"] == ["LlamaForCausalLM"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    ids = torch.randint(0, 263, (3, 23))
    with torch.no_grad():
        assert rel_err(model.eval()(ids), hf(ids).logits) <= 1e-4
    again = load_checkpoint(tmp_path / "ckpt")
    assert again.provenance["test"] is True
    with torch.no_grad():
        assert torch.equal(again.model(ids), model(ids))


def test_kv_cache_matches_full_forward(tiny_config):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 301, (2, 41))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch=2, max_len=64)
        parts = [model(ids[:, :13], cache=cache)]
        parts += [model(ids[:, t : t + 1], cache=cache) for t in range(13, 30)]
        parts.append(model(ids[:, 30:], cache=cache))  # a multi-token chunk after a past
        stepped = torch.cat(parts, dim=1)
    assert rel_err(stepped, full) <= 1e-5


def test_padding_mask_matches_unpadded(tiny_config):
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_config()).eval()
    ids = torch.randint(3, 301, (1, 9))
    padded = torch.cat([torch.full((1, 4), 2), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 9)], dim=1).long()
    pos = torch.clamp(mask.cumsum(-1) - 1, min=0)
    with torch.no_grad():
        ref = model(ids)
        got = model(padded, attention_mask=mask, position_ids=pos)[:, 4:]
    assert rel_err(got, ref) <= 1e-5


def test_greedy_generation_equals_transformers(tmp_path):
    hf = hf_model(dict(SHAPES[0], max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2), seed=7)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)  # peaky logits: no near-ties to flip argmax
    hf.save_pretrained(tmp_path)
    gen = TorchGenerator(load_hf_model(tmp_path), tokenizer=None)
    gen.stop_ids = set()
    prompt = [5, 17, 99, 3, 250, 42]
    ours = [ev.id for ev in gen.generate(prompt, max_new_tokens=30, temperature=0, repetition_penalty=1.0)]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                          pad_token_id=2, min_new_tokens=30)[0, len(prompt):].tolist()
    assert ours == ref
    # Reusing the cached prefix gives the same answer as a cold start.
    again = [ev.id for ev in gen.generate(prompt + ours[:3], max_new_tokens=10, temperature=0)]
    assert again == ours[3:13]


def test_kernel_path_matches_torch_path(tiny_config):
    """RMSNorm/RoPE through vnmini.kernels give the same logits and gradients as plain torch."""
    torch.manual_seed(5)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=2))
    ids = torch.randint(0, 301, (3, 29))
    outs = {}
    for backend in ("torch", "numba"):
        model.zero_grad()
        model.set_kernels(backend)
        logits = model(ids)
        logits.float().pow(2).mean().backward()
        outs[backend] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.set_kernels("torch")
    assert rel_err(outs["numba"][0], outs["torch"][0]) <= 1e-5
    for n, g in outs["torch"][1].items():
        assert rel_err(outs["numba"][1][n], g) <= 1e-4, n
