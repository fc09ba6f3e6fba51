"""ONNX export: graph I/O, parity vs transformers/torch through the KV cache, quantized variants.

Oracles: ``transformers.LlamaForCausalLM`` on the same checkpoint (batch, left
padding), our fp32 torch forward without cache, and ONNX Runtime itself.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vnmini.checkpoint import save_checkpoint
from vnmini.errors import VnminiError
from vnmini.export import to_onnx
from vnmini.export.onnx_verify import verify_onnx
from vnmini.models import LlamaForCausalLM, ModelConfig

SHAPES = {
    # GQA 6/2, untied head
    "gqa-untied": dict(vocab_size=301, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False),
    # odd sizes, MQA (1 kv head), tied embeddings, head_dim 12
    "odd-tied-mqa": dict(vocab_size=257, hidden_size=36, intermediate_size=50, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True),
    # Qwen2-style q/k/v biases, MHA
    "mha-bias": dict(vocab_size=263, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, attention_bias=True,
                     attention_out_bias=False, tie_word_embeddings=False),
}


def _checkpoint(path, seed=0, **kw):
    cfg = ModelConfig(max_position_embeddings=96, rope_theta=500.0, **kw)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Larger than init-scale weights so logits are far from flat and errors would show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return save_checkpoint(model, path)


@pytest.mark.parametrize("name", list(SHAPES))
def test_fp32_export_matches_transformers_batched_and_cached(tmp_path, name):
    import transformers

    ckpt = _checkpoint(tmp_path / "ckpt", **SHAPES[name])
    out = to_onnx(ckpt, tmp_path / "onnx", verify=True).path
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"], report["summary"]
    assert report["parity"]["decode_steps"] == 32 and report["greedy"]["equal"]
    assert (out / "verify.md").is_file() and (out / "config.json").is_file()

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    cfg = SHAPES[name]
    layers, kv = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")]
    assert [o.name for o in sess.get_outputs()] == ["logits"] + [f"present.{i}.{t}" for i in range(layers)
                                                                 for t in ("key", "value")]

    hf = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    # Batch of 3, left padding of 0/2/5, prefill 7 then 5 cached steps of one token.
    rng = np.random.default_rng(1)
    b, pre, steps = 3, 7, 5
    ids = rng.integers(3, cfg["vocab_size"], (b, pre + steps))
    mask = np.ones((b, pre + steps), dtype=np.int64)
    for row, pad in enumerate((0, 2, 5)):
        mask[row, :pad] = 0
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    past = {n: np.zeros((b, kv, 0, hd), np.float32) for n in names[3:]}
    got = []
    for s, e in [(0, pre)] + [(t, t + 1) for t in range(pre, pre + steps)]:
        res = sess.run(None, {"input_ids": ids[:, s:e], "attention_mask": mask[:, :e],
                              "position_ids": pos[:, s:e], **past})
        got.append(res[0])
        past = dict(zip(names[3:], res[1:], strict=True))
        assert res[1].shape == (b, kv, e, hd)
    got = np.concatenate(got, 1)
    valid = mask.astype(bool)
    err = np.abs(got - ref)[valid].max() / np.abs(ref[valid]).max()
    assert err <= 1e-4, err


@pytest.fixture(scope="module")
def tok_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A random model with the tiny tokenizer (vocab rounded up to an odd size)."""
    cfg = dict(vocab_size=tiny_tokenizer.vocab_size + 5, hidden_size=64, intermediate_size=160,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tokckpt") / "ckpt"
    model_cfg = ModelConfig(max_position_embeddings=256, **cfg)
    torch.manual_seed(3)
    return save_checkpoint(LlamaForCausalLM(model_cfg), path, tokenizer=tiny_tokenizer)


@pytest.mark.parametrize("dtype,quant,op", [("fp32", "int8", "MatMulInteger"), ("fp32", "int4", "MatMulNBits"),
                                            ("fp16", "none", None)])
def test_quantized_variants_report_quality(tmp_path, tok_checkpoint, dtype, quant, op):
    out = to_onnx(tok_checkpoint, tmp_path / "q", dtype=dtype, quant=quant, block_size=16).path
    rep = json.loads((out / "verify.json").read_text())
    assert rep["passed"] and rep["variant"] == (quant if quant != "none" else dtype)
    q = rep["quality"]
    # A random near-flat model: quantization must move the distribution only a little.
    assert 0 <= q["kl_torch_onnx"] < 0.05 and q["top1_agreement"] > 0.5
    assert abs(q["delta_bpb"]) < 0.05 and q["bytes"] > 100
    graph = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    if op:
        assert op in ops
    if quant == "int4":
        blocks = {a.i for n in graph.graph.node if n.op_type == "MatMulNBits"
                  for a in n.attribute if a.name == "block_size"}
        assert blocks == {16}
    if dtype == "fp16":
        assert graph.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert rep["parity"]["decode_max_rel_err"] < 5e-3


def test_external_data_and_verify_detects_a_wrong_model(tmp_path, tok_checkpoint):
    out = to_onnx(tok_checkpoint, tmp_path / "ext", external_data=True).path
    assert (out / "model.onnx.data").stat().st_size > (out / "model.onnx").stat().st_size
    assert json.loads((out / "verify.json").read_text())["passed"]
    # The same graph checked against other weights of the same shape must fail the fp32 gates.
    from vnmini.checkpoint import load_checkpoint

    ck = load_checkpoint(tok_checkpoint)
    ck.model.reset_parameters(seed=9)
    rep = verify_onnx(out, ck)
    assert not rep["passed"] and "FAILED" in rep["summary"]


def test_bad_arguments_are_one_line_errors(tmp_path, tok_checkpoint):
    with pytest.raises(VnminiError, match="no such checkpoint"):
        to_onnx(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("keep me")
    with pytest.raises(VnminiError, match="--force"):
        to_onnx(tok_checkpoint, tmp_path / "exists")
    assert (tmp_path / "exists" / "x").read_text() == "keep me"
    with pytest.raises(VnminiError, match="--quant"):
        to_onnx(tok_checkpoint, tmp_path / "o", quant="int3")
    with pytest.raises(VnminiError, match="--block-size"):
        to_onnx(tok_checkpoint, tmp_path / "o", quant="int4", block_size=24)
    with pytest.raises(VnminiError, match="--dtype"):
        to_onnx(tok_checkpoint, tmp_path / "o", dtype="bf16")
    assert not (tmp_path / "o").exists()
