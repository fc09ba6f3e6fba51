"""ChatSession (history, template, context fitting, interruption) and the `vnmini chat` terminal loop.

Oracle for the rendered prompt: transformers' tokenizer loaded from the checkpoint folder
(`apply_chat_template` with the template we saved).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import unicodedata

import pytest
from conftest import read_until

from vnmini.errors import VnminiError
from vnmini.runtime.chat import ChatSession


@pytest.fixture
def gen(tiny_checkpoint):
    import vnmini

    return vnmini.load(tiny_checkpoint)


def test_prompt_matches_transformers_chat_template(gen, tiny_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint)
    s = ChatSession(gen, system_prompt="Bạn là trợ lý pháp luật.", max_new_tokens=8, temperature=0)
    s.ask("Xin chào")
    first = s.turns[0][1]  # the answer as kept in history (stripped)
    msgs = [{"role": "system", "content": "Bạn là trợ lý pháp luật."}, {"role": "user", "content": "Xin chào"},
            {"role": "assistant", "content": first}, {"role": "user", "content": "Điều 1 nói gì?"}]
    ref = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert s.prompt_ids("Điều 1 nói gì?") == list(ref)


def test_stream_equals_generator_chat_and_history_grows(gen):
    s = ChatSession(gen, max_new_tokens=12, temperature=0)
    streamed = "".join(ev.text for ev in s.send("Hôm nay trời đẹp quá"))
    ref = gen.chat([{"role": "user", "content": "Hôm nay trời đẹp quá"}], max_new_tokens=12, temperature=0,
                   repetition_penalty=1.1)
    assert streamed == ref
    assert s.turns == [("Hôm nay trời đẹp quá", ref.strip())]
    assert not s.last_interrupted and s.last_stats["new_tokens"] >= 1
    s.reset()
    assert s.turns == [] and s.messages() == []


def test_nfd_and_old_style_tones_give_the_same_prompt(gen):
    s = ChatSession(gen, max_new_tokens=4)
    clean = "Hòa bình và khỏe mạnh, thủy lợi"
    messy = unicodedata.normalize("NFD", "Hoà bình và khoẻ mạnh, thuỷ lợi")
    assert messy != clean
    assert s.prompt_ids(messy) == s.prompt_ids(clean)


def test_oldest_turns_dropped_system_prompt_kept(gen):
    gen.context_length = ctx = 140  # a short window (the model allows 256) keeps the test quick
    s = ChatSession(gen, system_prompt="Trả lời ngắn.", max_new_tokens=30, temperature=0)
    msg = "Mọi người đều bình đẳng trước pháp luật. " * 2
    seen_drop = False
    for i in range(5):
        text = f"{i}: {msg}"
        events = s.send(text)
        seen_drop |= s.dropped_turns > 0
        prompt = s.prompt_ids(text)  # re-fitting an already-fitting conversation drops nothing more
        assert s.dropped_turns == 0
        assert len(prompt) + s.max_new_tokens <= ctx or not s.turns  # alone, the answer is capped instead
        for _ in events:
            pass
        msgs = s.messages()
        assert msgs[0] == {"role": "system", "content": "Trả lời ngắn."}
        assert msgs[-2]["content"] == text  # the newest turn is always kept
        # What was kept is a suffix of the conversation, in order.
        kept = [int(m["content"].split(":")[0]) for m in msgs if m["role"] == "user"]
        assert kept == list(range(i - len(kept) + 1, i + 1))
    assert seen_drop


def test_interrupted_answer_is_kept_partially(gen):
    s = ChatSession(gen, max_new_tokens=40, temperature=0.9, seed=3)
    events = s.send("Xin chào")
    got = [next(events).text for _ in range(3)]
    events.close()
    assert s.last_interrupted and s.last_stats["finish_reason"] == "interrupted"
    assert s.turns == [("Xin chào", "".join(got).strip())]
    # The session (and the backend's cache) keep working after the interruption.
    full = s.ask("Cảm ơn")
    assert not s.last_interrupted and len(s.turns) == 2 and s.turns[1] == ("Cảm ơn", full.strip())


def test_too_long_message_and_bad_options(gen):
    s = ChatSession(gen, max_new_tokens=10)
    with pytest.raises(VnminiError, match="context"):
        s.send("Điều 1. " * 200)
    with pytest.raises(VnminiError, match="empty"):
        s.send("   ")
    with pytest.raises(VnminiError, match="--temperature"):
        ChatSession(gen, temperature=-1)
    assert s.ask("Xin chào") is not None  # still usable


def _chat_proc(ckpt, *args, slow_s: float = 0.0):
    """`vnmini chat` in a real subprocess; ``slow_s`` makes each decode step slow so Ctrl-C lands mid-answer."""
    code = (
        "import sys, time\n"
        "from vnmini.runtime.torch_backend import TorchGenerator\n"
        "from vnmini.text.tokenizer import VnTokenizer\n"
        f"if {slow_s} > 0:\n"
        "    orig = TorchGenerator._feed\n"
        f"    TorchGenerator._feed = lambda self, ids: (time.sleep({slow_s}), orig(self, ids))[1]\n"
        # A random model may sample EOS at any step; the answer must still be running when Ctrl-C lands.
        "    VnTokenizer.stop_ids = property(lambda self: [])\n"
        "from vnmini.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    # SIGINT back to the default in the child: a pytest started in the background of a non-interactive shell
    # (`pytest &`, CI runners) inherits SIGINT ignored, and then Ctrl-C would never reach the chat.
    return subprocess.Popen([sys.executable, "-c", code, "chat", str(ckpt), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_chat_cli_commands(tiny_checkpoint, cli, monkeypatch):
    """The terminal loop in-process, `input()` fed from a list (EOF at the end)."""
    lines = iter(["/help", "Xin chào", "/bogus", "/reset", unicodedata.normalize("NFD", "Hoà bình"), "Điều 1. " * 300])
    prompts = []

    def fake_input(prompt=""):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code, out, err = cli("chat", tiny_checkpoint, "-n", "20", "-t", "0", "--system", "Bạn là trợ lý.")
    assert code == 0, err
    assert "/reset" in out and "unknown command /bogus" in out and "(conversation cleared)" in out
    assert "error:" in err and "context" in err  # the too-long message is refused, the loop goes on
    assert prompts == [">>> "] * 7  # six lines read, then EOF at the seventh prompt


def test_chat_cli_ctrl_c_stops_answer_not_program(tiny_checkpoint):
    """A real SIGINT mid-answer stops the answer; then two at the empty prompt quit (exit 0)."""
    p = _chat_proc(tiny_checkpoint, "-n", "200", "-t", "0.8", slow_s=0.05)
    p.stdin.write("Xin chào\n".encode())
    p.stdin.flush()
    try:
        buf = read_until(p, b"context", b"", timeout=60)  # the banner names the context length
        # The first prompt: the queued line is read at once and the answer starts. Waiting for it (not a fixed
        # time after the banner) keeps a slow start on a loaded machine from landing Ctrl-C at the prompt.
        buf = read_until(p, b">>> ", buf, timeout=60)
        time.sleep(1.0)  # mid-answer: 200 tokens x 50 ms
        p.send_signal(signal.SIGINT)
        buf = read_until(p, b"(stopped)", buf, timeout=60)
        assert p.poll() is None  # still running, back at the prompt
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        buf = read_until(p, b"Ctrl-C again", buf, timeout=60)
    except BaseException:
        p.kill()
        p.communicate(timeout=30)
        raise
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    out = (buf + out).decode("utf-8", "replace")
    assert p.returncode == 0, err.decode()
    assert out.index("(stopped)") < out.index("Ctrl-C again")



def test_threads_helper_bounds_torch_and_numba_and_load_bounds_torch(tiny_checkpoint):
    """``vnmini.kernels.set_threads(1)`` (the Trainer's and the quickstart's) holds torch and the Numba kernels to
    one thread and ``restore_threads`` gives the counts back; ``load(..., threads=1)`` (chat/eval/serve --threads)
    holds torch, the only one inference runs on."""
    import numba
    import torch

    from vnmini.kernels import restore_threads, set_threads
    from vnmini.runtime.loader import load

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba sees one thread here")
    prev = set_threads(2)
    try:
        inner = set_threads(1)
        assert inner == (2, 2) and (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
        assert set_threads(None) is None and torch.get_num_threads() == 1  # None changes nothing
        restore_threads(inner)
        assert (torch.get_num_threads(), numba.get_num_threads()) == (2, 2)
        load(tiny_checkpoint, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        restore_threads(prev)
    assert (torch.get_num_threads(), numba.get_num_threads()) == prev
