"""``vnmini serve``: the OpenAI-compatible server, driven by the official ``openai`` client.

Oracle for every answer: the same request run through the library (``Generator.chat`` /
``generate`` on a second generator over the same weights). A uvicorn server runs in a thread
on a free loopback port; every client call has a timeout. Backends: a tiny random torch model,
its GGUF (llama.cpp), and a scripted generator (known text, adjustable speed) for stop,
end-of-turn and cancellation cases.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_until

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from vnmini.runtime.generator import Generator  # noqa: E402
from vnmini.runtime.server import bind, create_app  # noqa: E402
from vnmini.runtime.torch_backend import TorchGenerator  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CTX = 256


# ------------------------------------------------------------------ helpers
@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def client(url: str, key: str = "unused", timeout: float = 60.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)


class Scripted(Generator):
    """Says ``text`` (then the end-of-turn token) whatever the prompt: logits peaked on the next id.

    ``delay`` seconds per token make answers slow enough to stop; ``steps`` counts decode steps,
    ``prompts`` records every prompt it was given."""

    backend = "scripted"

    def __init__(self, tokenizer, text: str, delay: float = 0.0, end: bool = True) -> None:
        super().__init__(tokenizer, CTX)
        self.source = "scripted"
        self.script = tokenizer.encode(text) + ([tokenizer.eot_id] if end else [])
        self.delay, self.step, self.steps, self.prompts = delay, 0, 0, []

    def reset(self) -> None:
        pass

    def _row(self) -> np.ndarray:
        x = np.zeros(self.tokenizer.vocab_size, dtype=np.float32)
        x[self.script[min(self.step, len(self.script) - 1)]] = 40.0
        return x

    def _prefill(self, ids):
        self.prompts.append(list(ids))
        self.step = 0
        return self._row()

    def _feed(self, ids):
        time.sleep(self.delay)
        self.step += 1
        self.steps += 1
        return self._row()

    def logits(self, token_ids, first=0):
        return np.stack([self._row() for _ in token_ids[first:]])


def wait_for(cond, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    from vnmini.models import LlamaForCausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=CTX)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ref(tiny_model, tiny_tokenizer):
    """The library oracle: its own generator (own KV cache) over the same weights."""
    return TorchGenerator(tiny_model, tiny_tokenizer)


@pytest.fixture(scope="module")
def server(tiny_model, tiny_tokenizer):
    app = create_app(TorchGenerator(tiny_model, tiny_tokenizer), name="tiny", max_queue=16)
    with running(app) as url:
        yield url, app


MSGS = [{"role": "system", "content": "Bạn là trợ lý pháp luật."},
        {"role": "user", "content": "Luật Dân sự quy định gì?"}]


# ------------------------------------------------------------------ the API
def test_models_health_and_page(server):
    url, _ = server
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    h = httpx.get(url + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["backend"] == "torch" and h["context_length"] == CTX and not h["auth"]
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and "<textarea" in page.text and "isComposing" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing to fetch from elsewhere


def test_chat_non_streamed_matches_library(server, ref, tiny_tokenizer):
    url, _ = server
    r = client(url).chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, temperature=0)
    want = ref.chat(MSGS, max_new_tokens=12, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ref.last_stats["finish_reason"]
    assert r.usage.prompt_tokens == len(tiny_tokenizer.encode_chat(MSGS))
    assert r.usage.completion_tokens == ref.last_stats["new_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_equals_non_stream_with_seed(server):
    url, _ = server
    c = client(url)
    kw = dict(model="tiny", messages=MSGS, max_tokens=16, temperature=0.9, seed=7)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # Without include_usage no usage chunk comes (OpenAI's behaviour).
    plain = list(c.chat.completions.create(**kw, stream=True))
    assert all(ch.choices for ch in plain)


def test_completions_and_stop_strings(server, ref):
    url, _ = server
    c = client(url)
    prompt = "Điều 1. Phạm vi điều chỉnh"
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    want = ref.complete(prompt, max_new_tokens=20, temperature=0)
    assert r.choices[0].text == want and r.usage.completion_tokens == ref.last_stats["new_tokens"]
    stop = want.strip()[3:6]
    assert stop and stop in want
    cut = want[: want.index(stop)]
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt=prompt, max_tokens=20, temperature=0, stop=stop, stream=True) if ch.choices)
    assert streamed == cut
    # max_tokens reached: finish_reason "length", exactly that many tokens.
    r = c.chat.completions.create(model="tiny", messages=MSGS, max_tokens=1, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens <= 1


def test_nfd_and_old_tones_normalized(server):
    url, _ = server
    c = client(url)
    clean = [{"role": "user", "content": "Hòa bình và khỏe mạnh, thủy lợi"}]
    messy = [{"role": "user", "content": unicodedata.normalize("NFD", "Hoà bình và khoẻ mạnh, thuỷ lợi")}]
    a = c.chat.completions.create(model="tiny", messages=clean, max_tokens=8, temperature=0)
    b = c.chat.completions.create(model="tiny", messages=messy, max_tokens=8, temperature=0)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content


def test_end_of_turn_and_stop_on_scripted_model(tiny_tokenizer):
    text = "Xin chào, tôi là trợ lý."
    gen = Scripted(tiny_tokenizer, text)
    with running(create_app(gen, name="s")) as url:
        c = client(url)
        r = c.chat.completions.create(model="s", messages=[{"role": "user", "content": "Chào"}], max_tokens=100)
        assert r.choices[0].message.content == text and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == len(gen.script) - 1  # the end-of-turn token is not content
        r = c.chat.completions.create(model="s", messages=[{"role": "user", "content": "Chào"}], max_tokens=3)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
        r = c.chat.completions.create(model="s", messages=[{"role": "user", "content": "Chào"}], stop=["tôi"])
        assert r.choices[0].message.content == "Xin chào, " and r.choices[0].finish_reason == "stop"
        # An NFD stop string matches the NFC text (stops are normalized like the input).
        nfd = unicodedata.normalize("NFD", "trợ")
        r = c.chat.completions.create(model="s", messages=[{"role": "user", "content": "Chào"}], stop=nfd)
        assert r.choices[0].message.content == "Xin chào, tôi là "


# ------------------------------------------------------------- bad input
BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "not an object"),
    (b'{"messages": []}', 400, "non-empty list"),
    (b'{"model": "x"}', 400, "messages is missing"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temprature": 1}', 400, "unknown field"),
    (b'{"messages": [{"role": "tool", "content": "hi"}]}', 400, "role 'tool'"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 0.5}', 400, "repetition_penalty"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n 2"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400, "temperature -1"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens 0"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}', 400, "integer"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400, "text only"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "stream must be"),
]


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server):
    url, _ = server
    api = url + "/v1/chat/completions"
    with httpx.Client(timeout=30) as h:
        for body, status, words in BAD:
            r = h.post(api, content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
        huge = {"messages": [{"role": "user", "content": "Điều 1. " * 140_000}]}  # ~1.3 MB of JSON
        r = h.post(api, json=huge)
        assert r.status_code == 413 and "KiB" in r.json()["error"]["message"]
        long = {"messages": [{"role": "user", "content": "Điều 1. Phạm vi " * 400}]}  # fits the body, not the context
        r = h.post(api, json=long)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert "context is 256" in r.json()["error"]["message"]
        r = h.post(url + "/v1/completions", json={"prompt": [10**6]})
        assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]
        assert h.get(url + "/nowhere").status_code == 404
        # max_tokens 10**9 is capped by the context left after the prompt: a clear rule, not an error.
        r = h.post(api, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9,
                              "temperature": 0, "repetition_penalty": 1.0, "frequency_penalty": 0})
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        assert u["total_tokens"] <= CTX
        if r.json()["choices"][0]["finish_reason"] == "length":
            assert u["total_tokens"] == CTX
    ok = client(url).chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    assert ok.choices[0].message.content is not None
    assert httpx.get(url + "/health", timeout=10).json()["pending"] == 0


def test_api_key(tiny_model, tiny_tokenizer):
    app = create_app(TorchGenerator(tiny_model, tiny_tokenizer), name="tiny", api_key="s3cret")
    with running(app) as url:
        with pytest.raises(openai.AuthenticationError, match="API key"):
            client(url, key="wrong").models.list()
        assert httpx.post(url + "/v1/chat/completions", json={}, timeout=10).status_code == 401
        assert client(url, key="s3cret").models.list().data[0].id == "tiny"
        assert httpx.get(url + "/health", timeout=10).json()["auth"] is True  # open: holds no model output


# ------------------------------------------------------------- load
def ask_streamed(url: str, i: int) -> str:
    """Request ``i`` of the load test (its own prompt and seed), streamed; returns the text."""
    msgs = [{"role": "user", "content": f"Câu hỏi số {i}: Điều {i} nói gì?"}]
    stream = client(url).chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0.8,
                                                 seed=i, stream=True)
    return "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)


@pytest.fixture(scope="module")
def alone(server):
    """Each load-test request run alone, one after another: the text it must get under load too."""
    answers = [ask_streamed(server[0], i) for i in range(32)]
    assert len(set(answers)) > 8  # distinct prompts and seeds: distinct answers, so mixing would show
    return answers


@pytest.mark.parametrize("max_queue", [16, 31])
def test_32_concurrent_streams_complete_or_429_never_mix(max_queue, alone, tiny_model, tiny_tokenizer):
    app = create_app(TorchGenerator(tiny_model, tiny_tokenizer), name="tiny", max_queue=max_queue)
    with running(app) as url:
        def ask(i: int) -> str:
            return ask_streamed(url, i)

        assert ask(0) == alone[0]  # warm: memory below is measured after the first of everything
        before = rss_mb()
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(ask, i) for i in range(32)]
            results = []
            for f in futures:
                try:
                    results.append(f.result(timeout=90))  # a hung stream fails here, it never blocks
                except openai.RateLimitError as e:
                    assert "busy" in str(e)
                    results.append(None)
        took = time.perf_counter() - t0
        served = [i for i, r in enumerate(results) if r is not None]
        for i in served:
            assert results[i] == alone[i], f"request {i} got another request's text"
        assert len(served) >= min(32, max_queue + 1)  # the running one + max_queue waiting are always admitted
        eng = app.state.engine
        wait_for(lambda: eng.pending == 0, what="the queue to drain")
        assert eng.counts["rejected"] == 32 - len(served)
        grew = rss_mb() - before
        assert grew < 150, f"memory grew by {grew:.0f} MB under 32 concurrent streams"
    print(f"\n32 concurrent streams, --max-queue {max_queue}: {len(served)} served, {32 - len(served)} got 429, "
          f"{took:.2f} s, RSS {grew:+.1f} MB")


def test_429_when_the_queue_is_full(tiny_tokenizer):
    gen = Scripted(tiny_tokenizer, "Xin chào " * 60, delay=0.05, end=False)
    with running(create_app(gen, name="s", max_queue=1)) as url:
        msgs = [{"role": "user", "content": "Chào"}]
        with httpx.Client(timeout=30) as h, h.stream("POST", url + "/v1/chat/completions",
                                                     json={"messages": msgs, "stream": True}) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the connection (and cancels)
            next(lines)  # generating now
            waiting = threading.Thread(target=lambda: httpx.post(url + "/v1/chat/completions", timeout=30,
                                                                  json={"messages": msgs, "max_tokens": 2}))
            waiting.start()
            wait_for(lambda: httpx.get(url + "/health", timeout=5).json()["pending"] == 2, what="a waiting request")
            r = httpx.post(url + "/v1/chat/completions", json={"messages": msgs}, timeout=10)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert "--max-queue" in r.json()["error"]["message"]
        waiting.join(30)  # closing the first stream cancelled it, so the waiting one ran
        h = httpx.get(url + "/health", timeout=5).json()
        assert h["counts"]["rejected"] == 1 and h["pending"] == 0


def test_disconnect_cancels_generation(tiny_tokenizer):
    gen = Scripted(tiny_tokenizer, "Xin chào " * 80, delay=0.03, end=False)
    app = create_app(gen, name="s")
    health = lambda: httpx.get(url + "/health", timeout=5).json()  # noqa: E731
    with running(app) as url:
        msgs = [{"role": "user", "content": "Chào"}]
        with httpx.Client(timeout=30) as h:
            with h.stream("POST", url + "/v1/chat/completions",
                          json={"messages": msgs, "stream": True, "max_tokens": 200}) as r:
                lines = r.iter_lines()
                for _ in range(6):
                    next(lines)
            # A streaming client left: the generation stops within a token or two, not after 200.
            wait_for(lambda: health()["counts"]["cancelled"] == 1 and health()["pending"] == 0, what="cancel")
            assert gen.steps < 40
            # A non-streamed client that gives up (timeout) is noticed while it waits, too.
            steps = gen.steps
            with pytest.raises(httpx.ReadTimeout):
                h.post(url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 200}, timeout=0.6)
            wait_for(lambda: health()["counts"]["cancelled"] == 2 and health()["pending"] == 0, what="cancel 2")
            assert gen.steps - steps < 60


# ------------------------------------------------------------- backends, CLI
def test_gguf_backend_serves_the_same_answer(tmp_path, tiny_checkpoint):
    import vnmini
    from vnmini.export import to_gguf

    path = to_gguf(tiny_checkpoint, tmp_path / "m.gguf", quant="f32", verify=False).path
    want = vnmini.load(path).chat(MSGS, max_new_tokens=10, temperature=0)
    with running(create_app(path)) as url:
        c = client(url)
        assert c.models.list().data[0].id == "m"
        r = c.chat.completions.create(model="m", messages=MSGS, max_tokens=10, temperature=0)
        assert r.choices[0].message.content == want


def test_cli_errors_are_one_line(cli, tiny_checkpoint):
    busy = bind("127.0.0.1", 0)
    try:
        code, out, err = cli("serve", tiny_checkpoint, "--port", busy.getsockname()[1])
        assert code == 2 and "--port" in err and len(err.strip().splitlines()) == 1
    finally:
        busy.close()
    code, _, err = cli("serve", tiny_checkpoint, "--port", "0", "--max-queue", "-1")
    assert code == 2 and "--max-queue -1" in err
    code, _, err = cli("serve", tiny_checkpoint / "nope")
    assert code == 2 and "no such file" in err


def test_cli_serves_until_ctrl_c(tiny_checkpoint):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vnmini.cli", "serve", str(tiny_checkpoint), "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        out = read_until(proc, b"Ctrl-C stops", timeout=90).decode()
        url = out.split("http://", 1)[1].split("/", 1)[0]
        assert url.startswith("127.0.0.1:")
        r = client("http://" + url).chat.completions.create(model="x", messages=MSGS, max_tokens=4)
        assert r.usage.prompt_tokens > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
