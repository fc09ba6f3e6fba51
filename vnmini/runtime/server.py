"""``vnmini serve MODEL``: an OpenAI-compatible HTTP server and an offline web chat, for any model
:func:`vnmini.load` opens (checkpoint folder, ``.gguf``, ONNX folder).

    import vnmini
    vnmini.serve("runs/quickstart/export/chat-q4_0.gguf", port=8000)      # blocks; Ctrl-C stops it

    from vnmini.runtime.server import create_app                       # or mount the app yourself
    app = create_app("runs/quickstart/chat", api_key="secret", max_queue=4)

    # any OpenAI client:
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Xin chào"}])

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (server-sent events with
``"stream": true``), ``GET /v1/models``, ``GET /health``, and the web chat page at ``/``
(one hand-written file, ``webchat/index.html``, no network). Requests are checked by
:mod:`vnmini.runtime.server_api` (OpenAI's error shape, 400/401/413/429 with a message
that names the field and the fix).

What it owns:

- **One model, one generation at a time.** llama.cpp contexts, ONNX sessions and our
  KV cache hold one sequence, so a single worker thread runs every request in turn
  (tokenizing included) with the same :class:`~vnmini.runtime.generator.Generator` code
  as ``vnmini chat``: Vietnamese normalization of every message, prompt and stop string,
  the model's own chat template, the shared sampler, end-of-turn stops. Consecutive
  chat turns reuse the KV cache for the prefix they share.
- **A bounded wait list.** At most ``max_queue`` requests wait while one generates; the
  next gets 429 with ``Retry-After`` at once instead of piling up memory and latency.
- **Cancellation.** A client that disconnects (stop button, Ctrl-C, timeout) while
  streaming or waiting has its generation stopped at the next token, or skipped if it
  had not started.
- **Loopback by default**; ``api_key`` makes every ``/v1`` route ask for
  ``Authorization: Bearer <key>`` (401 otherwise). ``/`` and ``/health`` stay open: they
  hold no model output.
- ``max_tokens`` is capped by what the context leaves after the prompt; a prompt that
  does not fit is a 400 (``code: context_length_exceeded``), never a silent cut.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime,
# and the request type is imported inside create_app (FastAPI is an optional extra).
import asyncio
import hmac
import logging
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from vnmini.errors import VnminiError
from vnmini.runtime.generator import Generator
from vnmini.runtime.server_api import (
    APIError,
    Request,
    chat_response,
    completion_response,
    parse_request,
    sse,
    stream_chunk,
    usage,
)

log = logging.getLogger("vnmini.serve")

MAX_REQUEST_BYTES = 512 * 1024  # far above any small model's context in text; a 1 MB prompt is a 413
DEFAULT_MAX_QUEUE = 8
_DRAIN_LIMIT = 16 * 1024 * 1024  # read (and drop) an oversized body up to here so the client sees the 413
_POLL_S = 0.25  # how often a waiting request checks that its client is still there
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _need_web_stack() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise VnminiError(f"vnmini serve needs FastAPI and uvicorn ({e.name} is missing); "
                          "install them with: pip install 'vnmini[serve]'") from None


def webchat_html() -> str:
    """The web chat page (package data, read the same way from a wheel or the source tree)."""
    return resources.files("vnmini.runtime").joinpath("webchat/index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- the engine
class Job:
    """One request on its way through the worker: events flow back to the event loop."""

    def __init__(self, req: Request, loop: asyncio.AbstractEventLoop) -> None:
        self.req = req
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.started = False
        self._check_at = time.monotonic() + _POLL_S

    def emit(self, *item: Any) -> None:
        """From the worker thread: hand ``item`` to the request's coroutine."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel.set()

    async def next(self, request: Any = None) -> tuple:
        """The next event; with ``request``, notice (every ``_POLL_S``) a client that went away: cancel, raise."""
        if request is None:
            return await self.events.get()
        while True:
            # Checked on a clock, not only when idle: tokens may arrive faster than the poll interval.
            if time.monotonic() >= self._check_at:
                self._check_at = time.monotonic() + _POLL_S
                if await request.is_disconnected():
                    self.cancel.set()
                    raise ConnectionAbortedError("client disconnected")
            try:
                return await asyncio.wait_for(self.events.get(), _POLL_S)
            except asyncio.TimeoutError:
                continue


class Engine:
    """The one model behind a worker thread and a bounded wait list (see module docstring)."""

    def __init__(self, gen: Generator, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.gen = gen
        self.max_queue = max_queue
        self._slots = threading.BoundedSemaphore(max_queue + 1)  # the running request + the waiting ones
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.pending = 0  # admitted and not finished (running included)
        # rejected: 429 at the door; refused: a 400 found by the worker (template, context); failed: a 500
        self.counts = {"completed": 0, "cancelled": 0, "rejected": 0, "refused": 0, "failed": 0}
        self._thread = threading.Thread(target=self._loop, name="vnmini-generate", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> Job:
        """Admit ``req`` (429 when ``max_queue`` already wait) and queue it for the worker."""
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.counts["rejected"] += 1
            raise APIError(429, f"the server is busy: one request is generating and {self.max_queue} are waiting "
                                "(--max-queue); retry in a moment.", code="queue_full")
        job = Job(req, asyncio.get_running_loop())
        with self._lock:
            self.pending += 1
        self._jobs.put(job)
        return job

    def close(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            outcome = "failed"
            try:
                if job.cancel.is_set():  # its client left while it waited
                    outcome = "cancelled"
                    continue
                outcome = self._run(job)
            except APIError as e:
                outcome = "refused"
                job.emit("error", e)
            except VnminiError as e:  # before the first token: the request's fault; after it: the model's
                outcome = "failed" if job.started else "refused"
                job.emit("error", APIError(500 if job.started else 400, str(e)))
            except Exception as e:  # never let one request kill the worker
                log.exception("generation failed")
                job.emit("error", APIError(500, f"generation failed ({type(e).__name__}: {e}); see the server log."))
            finally:
                with self._lock:
                    self.pending -= 1
                    self.counts[outcome] += 1
                self._slots.release()

    def _prompt_ids(self, req: Request) -> tuple[list[int], list[str]]:
        gen, tok = self.gen, self.gen.tokenizer
        if req.kind == "chat":
            if not tok.chat_template:
                raise APIError(400, f"{gen.source}: the model has no chat template; use /v1/completions, or give "
                                    "the checkpoint a chat_template in tokenizer_config.json.")
            # The tokenizer normalizes every message before the template renders it.
            return tok.encode_chat(req.messages, add_generation_prompt=True), [*req.stop, *tok.specials.eot]
        if isinstance(req.prompt, str):
            return gen.encode(req.prompt, add_bos=True), list(req.stop)
        bad = [i for i in req.prompt if not 0 <= i < tok.vocab_size]
        if bad:
            raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary of {tok.vocab_size}.",
                           param="prompt")
        return list(req.prompt), list(req.stop)

    def _run(self, job: Job) -> str:
        req, gen = job.req, self.gen
        ids, stops = self._prompt_ids(req)
        if not ids:
            raise APIError(400, "the prompt is empty; send some text.", param="prompt")
        ctx = gen.context_length
        if len(ids) >= ctx:
            raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context is {ctx}; shorten it "
                                "or drop old messages.", code="context_length_exceeded")
        job.started = True
        job.emit("start", len(ids))
        events = gen.generate(ids, max_new_tokens=min(req.max_tokens, ctx - len(ids)), stop=stops, **req.sampling)
        try:
            for ev in events:
                if job.cancel.is_set():
                    return "cancelled"
                if ev.text:
                    job.emit("text", ev.text)
        finally:
            events.close()
        stats = gen.last_stats
        job.emit("done", stats["finish_reason"], len(ids), stats["new_tokens"])
        return "completed"


# ------------------------------------------------------------------ the app
def _model_name(model: str | Path | Generator) -> str:
    if isinstance(model, Generator):
        if not Path(model.source).exists():  # an in-memory model: no file name to show
            return f"vnmini-{model.backend}"
        model = model.source
    p = Path(str(model))
    return p.stem if p.suffix == ".gguf" else p.name or "vnmini"


def create_app(
    model: str | Path | Generator,
    *,
    name: str | None = None,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    backend: str | None = None,
    threads: int | None = None,
) -> Any:
    """A FastAPI app serving ``model`` (a path :func:`vnmini.load` opens, or a loaded Generator)."""
    _need_web_stack()
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    if max_queue < 0:
        raise VnminiError(f"--max-queue {max_queue}: must be >= 0 (0 = no request waits; one generates).")
    if api_key is not None and not api_key.strip():
        raise VnminiError("--api-key is empty; give a key, or leave the flag out for no authentication.")
    if isinstance(model, Generator):
        gen = model
    else:
        from vnmini.runtime.loader import load

        gen = load(model, backend=backend, threads=threads)
    if gen.tokenizer is None:
        raise VnminiError(f"{gen.source}: this model has no tokenizer; serve needs a checkpoint, GGUF or ONNX "
                          "folder saved with its tokenizer.")
    model_id = name or _model_name(model)
    engine = Engine(gen, max_queue=max_queue)
    tok = gen.tokenizer

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="vnmini serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.model_id = model_id

    @app.exception_handler(APIError)
    async def _api_error(request: HTTPRequest, e: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: HTTPRequest, e: HTTPException) -> JSONResponse:
        msg = {404: f"no route {request.url.path}; see /v1/models, /v1/chat/completions, /v1/completions, /health",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg).body(), status_code=e.status_code)

    def check_key(request: HTTPRequest) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>' with the key given "
                                "to --api-key.", code="invalid_api_key")

    async def read_body(request: HTTPRequest) -> bytes:
        size = request.headers.get("content-length", "")
        too_big = size.isdigit() and int(size) > max_request_bytes
        body, seen = bytearray(), 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_request_bytes:
                too_big = True
                if seen > _DRAIN_LIMIT:
                    break
            elif not too_big:
                body += chunk
        if too_big:
            raise APIError(413, f"the request is over {max_request_bytes // 1024} KiB, far more than this model's "
                                f"{gen.context_length}-token context holds; shorten the prompt.",
                           code="request_too_large")
        return bytes(body)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        # The page may talk to this server only: no CDN, no other host, even if a message held a link.
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'")
        return HTMLResponse(webchat_html(), headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_id, "backend": gen.backend, "context_length": gen.context_length,
                "pending": engine.pending, "max_queue": engine.max_queue, "auth": api_key is not None,
                "counts": dict(engine.counts)}

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "vnmini", "backend": gen.backend,
                "context_length": gen.context_length}

    @app.get("/v1/models")
    async def models(request: HTTPRequest) -> dict:
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def one_model(model: str, request: HTTPRequest) -> dict:
        check_key(request)
        if model != model_id:
            raise APIError(404, f"model {model!r} is not served here; this server holds {model_id!r}.",
                           code="model_not_found")
        return model_card()

    async def complete(request: HTTPRequest, kind: str) -> Any:
        check_key(request)
        req = parse_request(await read_body(request), kind, tok)
        job = engine.submit(req)
        handed_over = False  # once the stream owns the job, it cancels it
        try:
            first = await job.next(request)
            if first[0] == "error":
                raise first[1]
            prompt_tokens = first[1]
            if req.stream:
                handed_over = True
                return StreamingResponse(stream(job, prompt_tokens), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            parts: list[str] = []
            while True:
                item = await job.next(request)
                if item[0] == "text":
                    parts.append(item[1])
                elif item[0] == "error":
                    raise item[1]
                else:
                    _, finish, n_prompt, n_new = item
                    make = chat_response if kind == "chat" else completion_response
                    return JSONResponse(make(req, "".join(parts), finish, n_prompt, n_new, model_id))
        except ConnectionAbortedError:  # the client left (job.next cancelled the job): nobody to answer
            return Response(status_code=499)  # nginx's "client closed request", for the access log
        finally:
            if not handed_over:
                job.cancel.set()  # a no-op once done; stops the generation if we leave early

    async def stream(job: Job, prompt_tokens: int) -> AsyncIterator[bytes]:
        req, done = job.req, False
        try:
            if req.kind == "chat":
                yield sse(stream_chunk(req, model_id, text="", role=True))
            while True:
                # Starlette cancels this generator when the client disconnects: `finally` stops the job.
                item = await job.next()
                if item[0] == "text":
                    yield sse(stream_chunk(req, model_id, text=item[1]))
                elif item[0] == "error":
                    yield sse({"error": item[1].body()["error"]})
                    break
                else:
                    _, finish, n_prompt, n_new = item
                    yield sse(stream_chunk(req, model_id, finish=finish, text=None if req.kind == "chat" else ""))
                    if req.include_usage:
                        yield sse(stream_chunk(req, model_id, usage_=usage(n_prompt, n_new)))
                    break
            yield sse("[DONE]")
            done = True
        finally:
            if not done:
                job.cancel.set()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> Any:
        return await complete(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Any:
        return await complete(request, "completions")

    return app


# ---------------------------------------------------------------- serving
def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line naming the flag to change."""
    if not 0 <= port <= 65535:
        raise VnminiError(f"--port {port}: must be in 0..65535.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise VnminiError(f"--host {host}: cannot resolve it ({e.strerror}); use 127.0.0.1, or 0.0.0.0 for every "
                          "interface.") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise VnminiError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                          "choose another --port, or stop what uses it.") from None
    return sock


def serve(
    model: str | Path | Generator,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    name: str | None = None,
    backend: str | None = None,
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``model`` until Ctrl-C (the Python twin of ``vnmini serve``)."""
    _need_web_stack()
    import uvicorn

    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level not in levels:
        raise VnminiError(f"--log-level {log_level}: choose one of {', '.join(levels)}.")
    if not isinstance(model, Generator) and backend is None:
        from vnmini.runtime.loader import detect_backend

        detect_backend(model)  # a wrong path fails before anything binds or loads
    sock = bind(host, port)  # before the (slow) model load, so a busy port fails at once
    try:
        app = create_app(model, name=name, api_key=api_key, max_queue=max_queue, backend=backend, threads=threads)
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"vnmini serve: {app.state.model_id} on http://{shown}:{port}/ (web chat) and "
              f"http://{shown}:{port}/v1 (OpenAI API); Ctrl-C stops.", flush=True)
        if host not in LOOPBACK and api_key is None:
            print(f"warning: --host {host} lets other machines use this model without a key; "
                  "add --api-key to require one.", flush=True)
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, timeout_keep_alive=30)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: stopping is the normal end here
            pass
        print("vnmini serve: stopped.", flush=True)
    finally:
        sock.close()
