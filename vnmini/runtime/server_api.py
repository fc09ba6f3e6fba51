"""The OpenAI wire format for :mod:`vnmini.runtime.server`: request checking and response shapes.

Pure Python (no FastAPI here), so every rule is testable on its own:

    req = parse_request(body_bytes, "chat", tokenizer)      # or "completions"; raises APIError
    req.messages, req.sampling, req.stream, req.stop          # what the engine runs
    chat_response(req, "Xin chào", "stop", 12, 3, "vnmini-chat")

Rules (each a 400 with a message that names the field and the fix, in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape):

- the body must be a JSON object, at most ``max_bytes`` (413 past it);
- unknown fields are refused by name; OpenAI fields vnmini can't honour
  (``n`` > 1, ``logprobs``, ``tools``, ``logit_bias``, a JSON ``response_format``,
  ``echo``, ``suffix``, ``best_of`` > 1) are refused unless they carry their default;
  ``user``, ``stream_options``, ``parallel_tool_calls`` are accepted;
- ``frequency_penalty``/``presence_penalty`` (additive, OpenAI) have no twin in vnmini's
  sampler (multiplicative ``repetition_penalty``, CTRL/Hugging Face style): 0 is accepted,
  anything else refused with the way out (``repetition_penalty``, 1 = off);
- ``top_k`` and ``repetition_penalty`` are accepted as extensions (llama.cpp's and vLLM's
  servers take them too); absent sampling fields take vnmini's :data:`DEFAULTS`;
- ``max_tokens`` (or ``max_completion_tokens``) must be >= 1; it is then capped by the
  room the context leaves after the prompt (``finish_reason`` ``"length"`` says the cap
  was reached), so ``max_tokens: 10**9`` means "until the context is full";
- ``messages`` must be a non-empty list of ``{role, content}`` with role system, developer
  (= system), user or assistant and text content (a string or text parts);
- stop strings (at most 16) are normalized like the text, so NFD stops still match.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vnmini.runtime.sampling import DEFAULTS

MAX_STOP_STRINGS = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# field -> what it must be to be accepted (fields vnmini cannot honour otherwise)
_ONLY_DEFAULT: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1),
    "response_format": (None, {"type": "text"}),
}
_COMMON = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
           "stop", "seed", "frequency_penalty", "presence_penalty", "stream", "stream_options", "user",
           "parallel_tool_calls", "n", "logprobs", "top_logprobs", "logit_bias", "response_format"}
FIELDS = {
    "chat": _COMMON | {"messages", "tools", "tool_choice", "functions", "function_call"},
    "completions": _COMMON | {"prompt", "echo", "suffix", "best_of"},
}


class APIError(Exception):
    """An HTTP error in OpenAI's shape; the server turns it into a JSON response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, " ".join(message.split()), param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}.get(self.status, "invalid_request_error" if self.status < 500 else
                                             "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A checked request: what the engine needs to run it."""

    kind: str  # "chat" or "completions"
    model: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | list[int] | None = None
    max_tokens: int = DEFAULTS.max_new_tokens
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_k, top_p, repetition_penalty, seed
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``, or an APIError saying what is wrong with it."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object, e.g. "
                            '{"messages": [{"role": "user", "content": "Xin chào"}]}.')
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 (byte {e.start}); send UTF-8 JSON.") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                            "check the quoting and commas.") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to be a chat request.") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body is a JSON {type(body).__name__}, not an object; send "
                            '{"messages": [...]} or {"prompt": "..."}.')
    return body


def _number(body: dict, name: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
            integer: bool = False) -> Any:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise APIError(400, f"{name} must be {'an integer' if integer else 'a number'}, not {json.dumps(v)[:40]}.",
                       param=name)
    if v != v or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise APIError(400, f"{name} {v}: must be in {rng}.", param=name)
    return v


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise APIError(400, f"{where}: content part of type {kind!r} is not supported; this model reads "
                                    "text only (a string, or parts {\"type\": \"text\", \"text\": ...}).",
                               param=where)
            parts.append(p["text"])
        return "".join(parts)
    raise APIError(400, f"{where}: content must be a string or a list of text parts.", param=where)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise APIError(400, 'messages must be a non-empty list, e.g. [{"role": "user", "content": "Xin chào"}].',
                       param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with role and content.", param=where)
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise APIError(400, f"{where}: unsupported field(s) {sorted(extra)}; send role and content only "
                                "(this server has no tool calls).", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}: role {role!r} is not supported; use system, user or assistant.",
                           param=where)
        if "content" not in m:
            raise APIError(400, f"{where}: content is missing.", param=where)
        out.append({"role": ROLES[role], "content": _text_content(m.get("content"), where)})
    return out


def _prompt(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return [int(i) for i in value]
    raise APIError(400, "prompt must be a string (or one string in a list, or a list of token ids); "
                        "batches of prompts are not supported.", param="prompt")


def parse_request(raw: bytes | dict, kind: str, tokenizer: Any) -> Request:
    """Check a /v1/chat/completions (``kind="chat"``) or /v1/completions body; returns a :class:`Request`."""
    body = decode_body(raw) if isinstance(raw, bytes | bytearray) else raw
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise APIError(400, f"unknown field(s) {unknown}; this server takes {sorted(FIELDS[kind])}.",
                       param=unknown[0])
    for name, allowed in _ONLY_DEFAULT.items():
        if name in body and body[name] not in allowed:
            raise APIError(400, f"{name} {json.dumps(body[name])[:60]}: not supported by vnmini serve; "
                                f"leave it out or send {json.dumps(allowed[-1])}.", param=name)
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, -2.0, 2.0):
            raise APIError(400, f"{name} {body[name]}: vnmini has no additive penalty; send repetition_penalty "
                                f"instead (multiplicative, 1 = off, default {DEFAULTS.repetition_penalty}), "
                                f"or {name} 0.", param=name)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string (any name works: this server holds one model).", param="model")
    req = Request(kind=kind, model=model)
    if kind == "chat":
        if "messages" not in body:
            raise APIError(400, "messages is missing; send a non-empty list of {role, content}.", param="messages")
        req.messages = _messages(body["messages"])
    else:
        if "prompt" not in body:
            raise APIError(400, "prompt is missing; send the text to continue.", param="prompt")
        req.prompt = _prompt(body["prompt"])
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    if mt is not None:
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        req.max_tokens = _number({name: mt}, name, 1, None, integer=True)
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = _number(body, "top_k", 0, None, integer=True)
    rep = _number(body, "repetition_penalty", 0.0, None, lo_open=True)
    seed = _number(body, "seed", 0, None, integer=True)
    req.sampling = {
        "temperature": DEFAULTS.temperature if temperature is None else float(temperature),
        "top_p": DEFAULTS.top_p if top_p is None else float(top_p),
        "top_k": DEFAULTS.top_k if top_k is None else int(top_k),
        "repetition_penalty": DEFAULTS.repetition_penalty if rep is None else float(rep),
        "seed": seed,
    }
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop must be a string or a list of at most {MAX_STOP_STRINGS} strings.", param="stop")
    req.stop = [tokenizer.normalize(s) for s in stops if s]
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false.", param="stream")
    req.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise APIError(400, 'stream_options must be {"include_usage": true|false}.', param="stream_options")
        req.include_usage = bool(opts.get("include_usage"))
    return req


# ------------------------------------------------------------- responses
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(req: Request, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                  model: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{req.id}", "object": "chat.completion", "created": req.created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_response(req: Request, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                        model: str) -> dict[str, Any]:
    return {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage(prompt_tokens, completion_tokens)}


def stream_chunk(req: Request, model: str, text: str | None = None, finish: str | None = None,
                 role: bool = False, usage_: dict | None = None) -> dict[str, Any]:
    """One server-sent event's JSON: a text delta, the closing finish_reason, or the usage-only chunk."""
    if req.kind == "chat":
        base = {"id": f"chatcmpl-{req.id}", "object": "chat.completion.chunk", "created": req.created,
                "model": model}
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        base = {"id": f"cmpl-{req.id}", "object": "text_completion", "created": req.created, "model": model}
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    if usage_ is not None:
        return {**base, "choices": [], "usage": usage_}
    return {**base, "choices": choices}


def sse(obj: dict | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``[DONE]`` ends the stream)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
