"""What only a CUDA GPU can check: bf16 autocast, fused AdamW, torch.compile, the trainer, FSDP2, ORT-GPU.

Every test skips without CUDA (this project's machines have none by default);
``benchmarks/gpu_check.sh`` runs this file, ``tests/test_kernels_cuda.py`` on the
hardware and a training probe in one go on a machine that has one. Tolerances are
stated per check: bf16 keeps 8 mantissa bits, so its logits are compared
relatively, fp32 paths closely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU lent to this run")


@pytest.fixture
def gpu_model(tiny_config):
    from vnmini.models import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(vocab_size=1001, hidden_size=128, intermediate_size=256,
                                        num_attention_heads=4, num_key_value_heads=2)).cuda()


def test_bf16_autocast_matches_fp32(gpu_model):
    x = torch.randint(0, 1001, (4, 96), device="cuda")
    with torch.no_grad():
        ref = gpu_model(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu_model(x).float()
    rel = (got - ref).norm() / ref.norm()
    assert rel < 2e-2, rel  # bf16: ~3 significant digits per op, a few layers deep
    p, q = ref.log_softmax(-1), got.log_softmax(-1)
    assert (p.exp() * (p - q)).sum(-1).mean() < 1e-3  # KL per token


def test_fused_adamw_matches_foreach(gpu_model):
    import copy

    a, b = gpu_model, copy.deepcopy(gpu_model)
    oa = torch.optim.AdamW(a.parameters(), lr=1e-3, fused=True)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-3, foreach=True)
    x = torch.randint(0, 1001, (2, 32), device="cuda")
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).float().logsumexp(-1).mean().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_torch_compile_matches_eager(gpu_model):
    x = torch.randint(0, 1001, (2, 64), device="cuda")
    ref = gpu_model(x)
    compiled = torch.compile(gpu_model)
    got = compiled(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    got.float().mean().backward()  # the compiled backward runs too
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpu_model.parameters())


@pytest.fixture(scope="module")
def gpu_shards(tmp_path_factory, law_corpus):
    d = tmp_path_factory.mktemp("gpu")
    tok = law_corpus(d)
    tok.save(d / "shards")
    return d / "shards"


def test_trainer_on_cuda_bf16_with_a_time_budget(gpu_shards, tmp_path):
    from vnmini.training.pretrain import train

    s = train(data=str(gpu_shards), preset="micro", out=str(tmp_path / "run"), seq_len=32, micro_batch=4,
              global_batch_tokens=256, max_minutes=0.3, warmup_steps=5, schedule="wsd", eval_every=0,
              sample_tokens=0, device="cuda", progress=False)
    assert s["steps"] > 10 and torch.isfinite(torch.tensor(s["eval_bpb"])) and not s["stopped_early"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "plan" for r in recs)
    assert [r["lr"] for r in recs if "lr" in r][-1] == pytest.approx(3e-3 * 0.1)  # decayed at the deadline


def test_fsdp2_on_one_gpu_under_torchrun(gpu_shards, tmp_path):
    out = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "vnmini.cli", "train", "--data", str(gpu_shards), "--preset", "micro", "--out", str(out),
           "--seq-len", "32", "--micro-batch", "4", "--global-batch-tokens", "128", "--max-steps", "6",
           "--eval-every", "3", "--save-every", "3", "--sample-tokens", "0", "--device", "cuda", "--fsdp",
           "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "final" / "model.safetensors").is_file() and (out / "step_000003" / "trainer_state.pt").is_file()
    from vnmini.checkpoint import load_checkpoint

    m = load_checkpoint(out / "final").model  # FSDP gathered it into one plain HF folder
    assert all(torch.isfinite(q).all() for q in m.parameters())


def test_onnxruntime_gpu_matches_torch(tiny_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (pip install onnxruntime-gpu)")
    import numpy as np

    from vnmini.checkpoint import load_checkpoint
    from vnmini.export import to_onnx
    from vnmini.runtime.onnx_backend import ONNXGenerator
    from vnmini.runtime.torch_backend import TorchGenerator

    to_onnx(tiny_checkpoint, tmp_path / "onnx", verify=False)
    gen = ONNXGenerator(tmp_path / "onnx", device="cuda")
    assert gen.device_type == "cuda"
    ck = load_checkpoint(tiny_checkpoint)
    ids = list(range(5, 45))
    got, ref = gen.logits(ids), TorchGenerator(ck.model, ck.tokenizer).logits(ids)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
