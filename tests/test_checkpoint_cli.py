"""Checkpoint safety, generation interface and the foundation CLI verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vnmini
from vnmini.checkpoint import load_checkpoint, save_checkpoint
from vnmini.errors import VnminiError


def test_load_refuses_bad_folders(tmp_path, tiny_checkpoint):
    with pytest.raises(VnminiError, match="no such"):
        load_checkpoint(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(VnminiError, match="not supported"):
        load_checkpoint(broken)
    # Truncated weights: one line naming the file.
    w = tiny_checkpoint / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(VnminiError, match="model.safetensors"):
        load_checkpoint(tiny_checkpoint)


def test_save_is_atomic_on_failure(tmp_path, tiny_checkpoint, monkeypatch):
    ckpt = load_checkpoint(tiny_checkpoint)
    before = (tiny_checkpoint / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("vnmini.checkpoint.save_file", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(ckpt.model, tiny_checkpoint, tokenizer=ckpt.tokenizer)
    assert (tiny_checkpoint / "model.safetensors").read_bytes() == before
    assert not [p for p in tiny_checkpoint.parent.iterdir() if p.name.startswith(".")]


def test_load_generate_and_chat(tiny_checkpoint):
    gen = vnmini.load(tiny_checkpoint)
    text = gen.complete("Điều 1.", max_new_tokens=12, temperature=0.8, seed=3)
    again = gen.complete("Điều 1.", max_new_tokens=12, temperature=0.8, seed=3)
    assert text == again and gen.last_stats["new_tokens"] <= 12
    ids = gen.tokenizer.encode("Điều 1.", add_bos=True)
    logits = gen.logits(ids)
    assert logits.shape == (len(ids), gen.tokenizer.vocab_size) and np.isfinite(logits).all()
    streamed = list(gen.chat([{"role": "user", "content": "Chào bạn"}], stream=True, max_new_tokens=8, seed=1))
    assert all(isinstance(ev.text, str) for ev in streamed)
    # NFD input is normalized: same ids as NFC.
    import unicodedata

    assert gen.encode(unicodedata.normalize("NFD", "Hòa bình")) == gen.encode("Hòa bình")


def test_stop_string_truncates(tiny_checkpoint):
    gen = vnmini.load(tiny_checkpoint)
    full = gen.complete("Xin", max_new_tokens=20, temperature=0)
    if len(full) > 4:
        stop = full[2:4]
        cut = gen.complete("Xin", max_new_tokens=20, temperature=0, stop=[stop])
        assert cut == full[: full.find(stop)]
        assert gen.last_stats["finish_reason"] == "stop"


def test_cli_info_generate_and_errors(cli, tiny_checkpoint, tmp_path):
    code, out, _ = cli("--version")
    assert code == 0 and "vnmini" in out
    code, out, _ = cli("info", tiny_checkpoint)
    assert code == 0 and "parameters" in out and "tokenizer" in out
    code, out, _ = cli("generate", tiny_checkpoint, "Điều 1.", "-n", "5", "-t", "0", "--json")
    assert code == 0 and "text" in json.loads(out)
    code, _, err = cli("generate", tmp_path / "missing", "x")
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("generate", tiny_checkpoint, "x", "--top-p", "1.5")
    assert code == 2 and "--top-p" in err
