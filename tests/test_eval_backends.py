"""One eval table across backends: torch vs GGUF (llama.cpp) vs ONNX Runtime on the same weights.

f32 exports of the same random model must give the same bits per byte (1e-3
relative) and the same multiple-choice picks — the point of scoring every
backend through ``Generator.logits``.
"""

from __future__ import annotations

import pytest
from conftest import VI_SAMPLE

from vnmini.eval.bpb import eval_text
from vnmini.eval.mc import eval_mc, sample_mc_path


@pytest.fixture
def exported(tiny_checkpoint, tmp_path):
    from vnmini.export import to_gguf, to_onnx

    gguf_path = tmp_path / "m-f32.gguf"
    to_gguf(tiny_checkpoint, gguf_path, quant="f32", verify=False)
    onnx_dir = to_onnx(tiny_checkpoint, tmp_path / "onnx", verify=False).path
    return tiny_checkpoint, gguf_path, onnx_dir


def test_bpb_and_mc_agree_across_backends(exported):
    import vnmini

    ckpt, gguf_path, onnx_dir = exported
    gens = {name: vnmini.load(p) for name, p in (("torch", ckpt), ("gguf", gguf_path), ("onnx", onnx_dir))}
    assert [g.backend for g in gens.values()] == ["torch", "gguf", "onnx"]
    text = VI_SAMPLE * 3
    res = {k: eval_text(g, text, stride=48, context=96) for k, g in gens.items()}
    ref = res["torch"]
    assert ref["windows"] > 3
    for k in ("gguf", "onnx"):
        assert res[k]["tokens"] == ref["tokens"] and res[k]["bytes"] == ref["bytes"]
        assert res[k]["bpb"] == pytest.approx(ref["bpb"], rel=1e-3), k
    mc = {k: eval_mc(g, sample_mc_path(), limit=6, return_items=True) for k, g in gens.items()}
    for k in ("gguf", "onnx"):
        for a, b in zip(mc["torch"]["items"], mc[k]["items"], strict=True):
            assert a["logprobs"] == pytest.approx(b["logprobs"], rel=1e-3, abs=1e-3)
            assert a["pick"] == b["pick"], k
