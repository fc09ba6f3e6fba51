"""vnmini bench: one subprocess per model, weight-byte accounting, outputs written, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vnmini.errors import VnminiError
from vnmini.eval.bench import bench, markdown_table, weight_bytes_per_token


def _safetensors_oracle(folder):
    from safetensors import safe_open

    sizes = {}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            sizes[k] = t.numel() * t.element_size()
    return sizes


def test_weight_bytes_untied_and_gguf(tiny_config, tmp_path, tiny_tokenizer):
    from vnmini.checkpoint import save_checkpoint
    from vnmini.export import to_gguf
    from vnmini.models import LlamaForCausalLM

    cfg = tiny_config(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=96,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(1)
    ck = save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "untied", tokenizer=tiny_tokenizer)
    sizes = _safetensors_oracle(ck)
    got = weight_bytes_per_token(ck)
    assert got["untied_embedding"] and got["tensor_bytes"] == sum(sizes.values())
    assert got["bytes_per_token"] == sum(v for k, v in sizes.items() if "embed_tokens" not in k)
    # The f32 GGUF of the same weights reads the same bytes per token.
    g = to_gguf(ck, tmp_path / "u.gguf", quant="f32", verify=False)
    gg = weight_bytes_per_token(tmp_path / "u.gguf")
    assert gg["untied_embedding"] and gg["bytes_per_token"] == got["bytes_per_token"], g


def test_bench_torch_and_gguf_in_subprocesses(tiny_checkpoint, tmp_path):
    from vnmini.export import to_gguf

    gguf_path = tmp_path / "m.q8_0.gguf"
    to_gguf(tiny_checkpoint, gguf_path, quant="q8_0", verify=False)
    out = tmp_path / "out"
    res = bench([tiny_checkpoint, gguf_path], out_dir=out, prompt_tokens=16, decode_tokens=8, repeats=2, warmup=1,
                threads=1, bandwidth_mib=64)
    rows = res["rows"]
    assert [r["backend"] for r in rows] == ["torch", "gguf"]
    assert rows[1]["quant"] == "q8_0" and rows[0]["quant"] == "float32"
    assert rows[1]["file_bytes"] == gguf_path.stat().st_size
    assert rows[0]["file_bytes"] == (tiny_checkpoint / "model.safetensors").stat().st_size
    bw = res["bandwidth"]
    assert bw["read_gbps"] > 0.5 and bw["copy_gbps"] > 0.1
    for r in rows:
        assert len(r["runs"]) == 2 and r["prompt_tokens"] == 16 and r["decode_tokens"] == 8
        med_decode = float(np.median([x["decode_s"] for x in r["runs"]]))
        assert r["decode_tok_s"] == pytest.approx(8 / med_decode)
        assert r["ttft_ms"] >= 1000 * min(x["prefill_s"] for x in r["runs"])
        assert r["peak_rss_bytes"] > r["python_baseline_rss_bytes"] > 0  # the model's own memory shows
        assert r["ceiling_tok_s"] == pytest.approx(bw["read_gbps"] * 1e9 / r["bytes_per_token"])
        assert r["share_of_ceiling"] == pytest.approx(r["decode_tok_s"] / r["ceiling_tok_s"])
    # q8_0 stores ~8.5 bits per weight: about a quarter of the f32 bytes (embedding included, tied).
    assert 0.2 < rows[1]["bytes_per_token"] / rows[0]["bytes_per_token"] < 0.4
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"][1]["decode_tok_s"] == rows[1]["decode_tok_s"]
    assert (out / "bench.md").read_text() == markdown_table(rows, bw) == res["markdown"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_bad_inputs(tiny_checkpoint, tmp_path, cli):
    with pytest.raises(VnminiError, match="nope"):
        bench([tmp_path / "nope.gguf"])
    from vnmini.eval.bench_child import main as child_main
    from vnmini.eval.bench_child import measure

    with pytest.raises(VnminiError, match="context"):  # what the child reports, and run_child re-raises
        measure({"model": str(tiny_checkpoint), "prompt_tokens": 250, "decode_tokens": 10})
    assert child_main([json.dumps({"model": str(tiny_checkpoint), "repeats": 0})]) == 2
    code, out, err = cli("bench", tmp_path / "missing", "-o", tmp_path / "o")
    assert code == 2 and "missing" in err and not (tmp_path / "o").exists()


def test_weight_bytes_onnx_counts_gathered_table_once(tiny_checkpoint, tmp_path):
    """ONNX exports hold the tied embedding twice (Gather table + output MatMul): only one is read in full."""
    from vnmini.eval.bench import quant_label
    from vnmini.export import to_onnx

    d = to_onnx(tiny_checkpoint, tmp_path / "onnx", verify=False).path
    got = weight_bytes_per_token(d)
    ref = sum(_safetensors_oracle(tiny_checkpoint).values())  # tied: embedding read once, as the output matrix
    assert got["untied_embedding"] and got["embedding_bytes"] > 0
    assert abs(got["bytes_per_token"] - ref) / ref < 0.01
    assert quant_label(d) == "fp32"
