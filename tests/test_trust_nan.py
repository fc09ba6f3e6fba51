"""NaN/inf logits from a corrupt file or diverged weights: generation, chat, eval and `teacher
generate` fail with one VnminiError naming the model's path (never numpy's "probabilities contain
NaN"), and a GGUF/ONNX verify report never passes on non-finite logits — it names the side."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from conftest import VI_SAMPLE

from vnmini.errors import VnminiError

NAN_WORDS = b"\xff" * 256  # 0xffffffff is a float32 NaN: "random bytes in the middle" of a weight


def _poison_safetensors(ckpt, name="model.layers.0.mlp.down_proj.weight"):
    """Overwrite bytes in the middle of one tensor of model.safetensors, in place."""
    f = ckpt / "model.safetensors"
    raw = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    mid = 8 + n + (start + end) // 2 // 4 * 4
    raw[mid:mid + len(NAN_WORDS)] = NAN_WORDS
    f.write_bytes(bytes(raw))
    return ckpt


def _poison_gguf(path, name="output_norm.weight"):
    """Overwrite one tensor's data in a GGUF file with NaN bytes, in place."""
    import gguf

    r = gguf.GGUFReader(str(path))
    t = next(t for t in r.tensors if t.name == name)
    offset, size = int(t.data_offset), int(t.n_bytes)
    del r
    raw = bytearray(path.read_bytes())
    raw[offset:offset + size] = b"\xff" * size
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture
def nan_ckpt(tiny_checkpoint, tmp_path):
    """A poisoned copy (tiny_checkpoint itself stays clean for the fixtures that export it)."""
    import shutil

    return _poison_safetensors(shutil.copytree(tiny_checkpoint, tmp_path / "nan-ckpt"))


@pytest.fixture
def nan_loaded(tiny_checkpoint):
    """The clean checkpoint loaded, then a NaN put in a weight in memory (diverged training)."""
    from vnmini.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ck.model.model.layers[0].mlp.down_proj.weight[3, 5] = float("nan")
    return ck


@pytest.fixture
def clean_f32_gguf(tiny_checkpoint, tmp_path):
    from vnmini.export import to_gguf

    return to_gguf(tiny_checkpoint, tmp_path / "clean-f32.gguf", quant="f32", verify=False).path


def _nan_error(fn, path) -> str:
    with pytest.raises(VnminiError) as info:
        fn()
    msg = str(info.value)
    assert str(path) in msg and "NaN" in msg and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ generation
def test_generate_and_chat_name_the_checkpoint(nan_ckpt):
    import vnmini

    def gen():
        return vnmini.load(nan_ckpt)

    _nan_error(lambda: list(gen().generate("Điều 1.", max_new_tokens=5, temperature=0.7, seed=1)), nan_ckpt)
    _nan_error(lambda: gen().chat([{"role": "user", "content": "Xin chào"}], max_new_tokens=5), nan_ckpt)
    _nan_error(lambda: gen().complete("Điều 1.", max_new_tokens=5, temperature=0), nan_ckpt)


def test_torch_generator_in_memory_model_names_its_source(tiny_checkpoint):
    from vnmini.checkpoint import load_checkpoint
    from vnmini.runtime.torch_backend import TorchGenerator

    ck = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        ck.model.model.norm.weight[0] = float("inf")
    gen = TorchGenerator(ck.model, ck.tokenizer, source="runs/diverged/final")
    _nan_error(lambda: list(gen.generate("Điều 1.", max_new_tokens=3)), "runs/diverged/final")


def test_sampler_refuses_nan_and_survives_a_tiny_temperature():
    from vnmini.runtime.sampling import Sampler, SamplingOptions

    with pytest.raises(VnminiError, match="NaN/inf logits"):
        Sampler(SamplingOptions(temperature=0.7, seed=0))(np.array([0.0, np.nan, 1.0]), [])
    # x / 1e-300 overflows to inf; inf - inf used to be NaN inside the sampler
    s = Sampler(SamplingOptions(temperature=1e-300, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0))
    assert s(np.array([1.0, 3.0, 2.0]), []) == 1


def test_cli_generate_one_line_exit_2(nan_ckpt, cli):
    code, out, err = cli("generate", nan_ckpt, "Xin chào", "-n", "4")
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(nan_ckpt) in err and "NaN" in err


def test_eval_names_the_model(nan_ckpt):
    import vnmini
    from vnmini.eval.bpb import eval_text

    _nan_error(lambda: eval_text(vnmini.load(nan_ckpt), VI_SAMPLE), nan_ckpt)


# ------------------------------------------------------------ teacher generate
def test_teacher_generate_fails_cleanly_and_keeps_only_a_real_partial(nan_ckpt, tmp_path):
    from vnmini.training.teacher_generate import teacher_generate

    prompts = tmp_path / "p.txt"
    prompts.write_text("Điều 1.\nĐiều 2.\n", encoding="utf-8")
    out = tmp_path / "t.jsonl"
    partial = out.with_name(out.name + ".partial")
    _nan_error(lambda: teacher_generate(nan_ckpt, prompts, out, max_new_tokens=4, progress=False), nan_ckpt)
    assert not partial.exists() and not out.exists()  # no empty partial left behind

    line = json.dumps({"prompt": "Điều 1.", "completion": " x", "text": "Điều 1. x", "teacher": "t"}) + "\n"
    partial.write_text(line, encoding="utf-8")  # a resume point from an earlier, healthy run
    _nan_error(lambda: teacher_generate(nan_ckpt, prompts, out, max_new_tokens=4, progress=False), nan_ckpt)
    assert partial.read_text(encoding="utf-8") == line and not out.exists()


# ------------------------------------------------------------------------ GGUF
def test_corrupt_gguf_generate_and_verify(clean_f32_gguf, tiny_checkpoint):
    import vnmini
    from vnmini.checkpoint import load_checkpoint
    from vnmini.export.gguf_verify import verify_gguf

    bad = _poison_gguf(clean_f32_gguf)
    _nan_error(lambda: list(vnmini.load(bad).generate("Điều 1.", max_new_tokens=3)), bad)
    report = verify_gguf(bad, load_checkpoint(tiny_checkpoint), quant="f32", text=VI_SAMPLE)
    assert not report["passed"] and report["checks"]["finite"] is False, report["summary"]
    assert "gguf logits non-finite" in report["summary"] and "torch logits" not in report["summary"]


@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_nan_checkpoint_verify_never_passes(nan_loaded, clean_f32_gguf, tmp_path, quant):
    from vnmini.export import to_gguf
    from vnmini.export.gguf_verify import report_markdown, verify_gguf

    # torch side NaN, file side clean: the report must say which side is non-finite
    report = verify_gguf(clean_f32_gguf, nan_loaded, quant=quant, text=VI_SAMPLE)
    assert not report["passed"] and report["checks"]["finite"] is False
    assert "torch logits non-finite" in report["summary"], report["summary"]
    assert report["nonfinite"]["gguf"] == 0 and "gguf logits" not in report["summary"]
    assert "FAILED" in report_markdown(report)
    # end to end: a NaN checkpoint's export never reports PASSED (refused, or a failing report)
    try:
        res = to_gguf(nan_loaded, tmp_path / f"nan-{quant}.gguf", quant=quant, verify_text=VI_SAMPLE)
    except VnminiError as e:
        assert "FAILED" in str(e) or "NaN" in str(e), e
    else:
        assert not res.verify["passed"] and res.verify["checks"]["finite"] is False, res.verify["summary"]


# ------------------------------------------------------------------------ ONNX
def test_onnx_verify_never_passes_on_nan_torch_logits(tiny_checkpoint, nan_loaded, tmp_path):
    from vnmini.export import to_onnx
    from vnmini.export.onnx_verify import verify_onnx

    res = to_onnx(tiny_checkpoint, tmp_path / "onnx", verify=False)
    report = verify_onnx(res.path, nan_loaded, text=VI_SAMPLE, decode_steps=4,
                         quality_tokens=64)
    assert not report["passed"] and report["checks"]["finite"] is False
    assert "torch logits non-finite" in report["summary"], report["summary"]
    assert report["nonfinite"]["onnx"] == 0 and "onnx logits" not in report["summary"]
    assert "error" in report["greedy"]  # greedy decoding refused the NaN logits; the report still got written

