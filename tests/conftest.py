"""Shared fixtures: small random models and tokenizers made on the spot (tests run offline)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

# The repository root holds kernels/, models/, export/ and cli/, which the installed package maps into vnmini.*.
# On sys.path (`python -m pytest` puts the cwd first) they shadow real top-level packages of those names:
# transformers 5.25 imports Hugging Face's `kernels` and found ours. The tests import the installed vnmini, so the
# root comes off sys.path here, and PYTHONSAFEPATH keeps subprocesses (`python -m ...`, Python >= 3.11) from
# putting their cwd first.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: keep torch from oversubscribing when pytest and numba share them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_config():
    from vnmini.models import ModelConfig

    def make(**kw):
        base = dict(vocab_size=301, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                    tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
        base.update(kw)
        return ModelConfig(**base)

    return make


VI_SAMPLE = (
    "Điều 1. Phạm vi điều chỉnh. Bộ luật này quy định địa vị pháp lý, chuẩn mực pháp lý về cách ứng xử "
    "của cá nhân, pháp nhân; quyền, nghĩa vụ về nhân thân và tài sản.\n"
    "Điều 2. Công nhận, tôn trọng, bảo vệ và bảo đảm quyền dân sự. Mọi người đều bình đẳng trước pháp luật.\n"
    "Xin chào! Hôm nay trời đẹp quá, chúng ta đi uống cà phê nhé? Tôi có 25 quyển sách và 3 con mèo 🐱.\n"
    "Hòa bình, khỏe mạnh, thủy lợi, quý khách, người lao động được trả lương công bằng.\n"
)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A ~400-token byte-level BPE with vnmini's specials, trained on a few Vietnamese lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vnmini.text.specials import SPECIAL_TOKENS
    from vnmini.text.tokenizer import VnTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([VI_SAMPLE] * 3, trainer=trainer)
    return VnTokenizer(tok, pre_tokenizer_name="gpt-2")


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_tokenizer):
    """A random micro model saved with the tiny tokenizer."""
    from vnmini.checkpoint import save_checkpoint
    from vnmini.models import LlamaForCausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256)
    torch.manual_seed(0)
    return save_checkpoint(LlamaForCausalLM(cfg), tmp_path / "ckpt", tokenizer=tiny_tokenizer)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    from vnmini.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


LAW_LINES = [f"Điều {i}. Người lao động thứ {i} được hòa giải về thủy lợi, khỏe mạnh, quý trọng số {i * 7}."
             for i in range(80)]


@pytest.fixture(scope="session")
def law_corpus():
    """Builder: ``law_corpus(d)`` writes a 300-token tokenizer to d/tok and its shards
    to d/shards; returns the tokenizer."""

    def build(d):
        import json

        from vnmini.data.shards import prepare_shards
        from vnmini.text.tokenizer_train import train_tokenizer

        tok = train_tokenizer(LAW_LINES, vocab_size=300, is_text=True)
        tok.save(d / "tok")
        (d / "c.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in LAW_LINES),
                                   "utf-8")
        prepare_shards([d / "c.jsonl"], tok, d / "shards", val_fraction=0.1, shard_tokens=1024, progress=False)
        return tok

    return build


def save_random_teacher(folder, tok, hidden: int = 48, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """A seeded random Llama checkpoint saved with ``tok`` (a teacher for distillation tests)."""
    from vnmini.checkpoint import save_checkpoint
    from vnmini.models import LlamaForCausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=64)
    torch.manual_seed(0)
    return save_checkpoint(LlamaForCausalLM(cfg), folder, tokenizer=tok)


def read_until(proc: subprocess.Popen, marker: bytes, buf: bytes = b"", timeout: float = 60.0) -> bytes:
    """Read ``proc.stdout`` until ``marker`` appears; fail (never block) after ``timeout`` s or if it exits.

    Every read waits in ``select`` with a deadline, so a child that goes quiet or dies
    fails the test in seconds instead of hanging the suite in ``os.read``.
    """
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} from the child within {timeout:.0f} s; got {buf[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                err = proc.stderr.read().decode("utf-8", "replace")[-500:] if proc.stderr else ""
                raise AssertionError(f"the child exited (rc {proc.wait(timeout=10)}) before {marker!r}: {err}")
            buf += chunk
    return buf


@pytest.fixture(scope="session")
def vocab_dir():
    """The vocab-only GGUFs of real tokenizers that the llama-cpp-python sdist ships (cached; skip if offline)."""
    import sys
    import tarfile
    from importlib.metadata import version

    from vnmini.data.fetch import cache_dir

    ver = version("llama_cpp_python")
    out = cache_dir() / "llama-vocab" / ver
    if not (out / "ggml-vocab-qwen2.gguf").is_file():
        out.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                            "-d", str(out), f"llama-cpp-python=={ver}"], capture_output=True, text=True, timeout=600)
        sdists = list(out.glob("llama_cpp_python-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            pytest.skip(f"the llama-cpp-python {ver} sdist could not be fetched: {r.stderr.strip()[-200:]}")
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                if "/models/ggml-vocab-" in m.name and m.name.endswith(".gguf"):
                    m.name = m.name.rsplit("/", 1)[1]
                    tar.extract(m, out, filter="data")
        sdists[0].unlink()
    return out
