"""The ONNX Runtime backend behind ``vnmini.load``, a trained tiny model, and the CLI.

Oracle: our torch KV-cache generator on the same checkpoint (token-for-token
greedy equality), the torch forward for logits, ONNX Runtime's plain ``run``
for the IO-binding path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE

import vnmini
from vnmini.checkpoint import load_checkpoint, save_checkpoint
from vnmini.errors import VnminiError
from vnmini.export import to_onnx
from vnmini.models import LlamaForCausalLM, ModelConfig
from vnmini.runtime.onnx_backend import ONNXGenerator
from vnmini.runtime.torch_backend import TorchGenerator


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer):
    """A tiny model trained for a few seconds on VI_SAMPLE (peaked distributions), fp32 + int8 exports."""
    tok = tiny_tokenizer
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=192,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    data = torch.tensor(tok.encode(VI_SAMPLE, add_bos=True, add_eos=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(data) - 49, (4,))
        x = torch.stack([data[s:s + 49] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2.5, loss.item()  # it learned the text
    root = tmp_path_factory.mktemp("trained")
    ckpt = save_checkpoint(model, root / "ckpt", tokenizer=tok)
    text = VI_SAMPLE[: len(VI_SAMPLE) // 2]
    fp32 = to_onnx(ckpt, root / "fp32", verify_text=text).path
    int8 = to_onnx(ckpt, root / "int8", quant="int8", verify_text=text).path
    return ckpt, fp32, int8


def test_trained_model_fp32_and_int8(trained):
    ckpt, fp32, int8 = trained
    rep = json.loads((fp32 / "verify.json").read_text())
    assert rep["passed"] and rep["greedy"]["equal"] and rep["parity"]["decode_max_rel_err"] <= 1e-4
    assert rep["quality"]["bpb_torch"] < 1.5  # trained on this text: far below a random model's ~4
    q = json.loads((int8 / "verify.json").read_text())["quality"]
    assert q["top1_agreement"] >= 0.9 and q["kl_torch_onnx"] < 0.05 and abs(q["delta_bpb"]) < 0.05

    # Same text from both backends through the public interface (prompt normalized + BOS).
    torch_gen = vnmini.load(ckpt)
    onnx_gen = vnmini.load(fp32, threads=1)
    assert isinstance(onnx_gen, ONNXGenerator) and onnx_gen.backend == "onnx"
    kw = dict(max_new_tokens=40, temperature=0)
    a = torch_gen.complete("Điều 2. Công nhận", **kw)
    b = onnx_gen.complete("Điều 2. Công nhận", **kw)
    assert a == b and len(onnx_gen.last_stats["ids"]) > 5
    assert onnx_gen.chat([{"role": "user", "content": "Xin chào"}], max_new_tokens=8, temperature=0) == \
        torch_gen.chat([{"role": "user", "content": "Xin chào"}], max_new_tokens=8, temperature=0)


def test_io_binding_prefix_reuse_and_truncate(trained, tiny_tokenizer):
    ckpt, fp32, _ = trained
    model = load_checkpoint(ckpt).model
    ids = tiny_tokenizer.encode(VI_SAMPLE, add_bos=True)[:60]
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    bound, plain = ONNXGenerator(fp32, threads=1, io_binding=True), ONNXGenerator(fp32, threads=1, io_binding=False)
    for g in (bound, plain):
        got = np.concatenate([g.step(ids[:23]), g.step(ids[23:24]), g.step(ids[24:60])])
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
        assert g.cached_length == 60
        # Crop to 30 positions and re-feed: same logits as the uncached forward.
        assert g._truncate(30) and g.cached_length == 30
        again = g.step(ids[30:40])
        assert np.abs(again - ref[30:40]).max() / np.abs(ref).max() < 1e-4
        assert not g._truncate(99)
        np.testing.assert_allclose(g.logits(ids[:10]), ref[:10], rtol=0, atol=1e-4 * np.abs(ref).max())
    # Prompt-prefix reuse inside generate(): a second prompt sharing a prefix equals a fresh run.
    tgen = TorchGenerator(model, tiny_tokenizer)
    p1, p2 = ids[:20], ids[:15] + ids[40:45]
    for p in (p1, p2):
        o = [e.id for e in bound.generate(p, max_new_tokens=12, temperature=0)]
        t = [e.id for e in tgen.generate(p, max_new_tokens=12, temperature=0)]
        assert o == t


def test_backend_errors(tmp_path, trained):
    with pytest.raises(VnminiError, match="no model.onnx"):
        ONNXGenerator(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(VnminiError, match="model.onnx"):
        ONNXGenerator(bad)
    with pytest.raises(VnminiError, match="cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            raise VnminiError("cuda is available here; nothing to refuse")
        ONNXGenerator(trained[1], device="cuda")


def test_describe_onnx_and_info(cli, trained):
    from vnmini.export.onnx_inspect import describe_onnx

    d = describe_onnx(trained[2])
    assert d["quant"] == "int8" and d["layers"] == 2 and d["kv_heads"] == 2 and d["head_dim"] == 16
    assert "MatMulInteger" in d["quantized_ops"] and d["tokenizer"] and d["verify"].startswith("int8")
    code, out, _ = cli("info", trained[1])
    assert code == 0 and "ONNX decoder with KV cache" in out and "fp32" in out


def test_cli_export_onnx(cli, tmp_path, trained):
    pytest.importorskip("vnmini.cli.export", reason="the export command group (cli/export.py) is not there yet")
    ckpt = trained[0]
    code, out, err = cli("export", "onnx", ckpt, "-o", tmp_path / "o", "--quant", "int4", "--block-size", "32")
    assert code == 0, err
    assert "verify: int4" in out and (tmp_path / "o" / "verify.md").is_file()
    code, out, err = cli("export", "onnx", ckpt, "-o", tmp_path / "o")
    assert code == 2 and err.startswith("error:") and "--force" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("export", "onnx", tmp_path / "missing", "-o", tmp_path / "o2")
    assert code == 2 and "no such checkpoint" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("export", "onnx", ckpt, "-o", tmp_path / "o", "--force", "--no-verify", "--dtype", "fp16")
    assert code == 0 and "fp16" in out and not (tmp_path / "o" / "verify.json").exists()
