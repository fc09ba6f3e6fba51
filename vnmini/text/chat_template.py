"""Render a chat template safely: templates are untrusted input.

Any ``tokenizer_config.json``, ``chat_template.jinja`` or GGUF can carry a Jinja
chat template. This module renders one in Jinja's immutable sandbox with bounds
that the sandbox alone lacks: output size (:data:`TEMPLATE_MAX_CHARS`, checked
before a ``*``/``+``/``%``/padding/join builds a huge string and per output
chunk), time (:data:`TEMPLATE_MAX_SECONDS`, checked in every call, attribute,
item, filter, loop iteration and chunk), and a cap on integer sizes. Templates are
compiled once per string. Every failure is one :class:`VnminiError`.

    text = render_chat_template(template, "tok/tokenizer.json", "fix chat_template in ...",
                                messages=[{"role": "user", "content": "Chào"}],
                                add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
"""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Sequence
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.exceptions import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vnmini.errors import VnminiError

TEMPLATE_MAX_CHARS = 1_000_000
TEMPLATE_MAX_SECONDS = 2.0
_MAX_INT_BITS = 65_536  # bigger integers only serve to burn CPU in one uninterruptible operation

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vnmini_template_deadline", default=None)


class _RenderLimit(Exception):
    """A template went past the size or time bound (never a TypeError/LookupError: Jinja swallows those)."""


def _tick() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _RenderLimit(f"took longer than {TEMPLATE_MAX_SECONDS:g} s")


def _size(obj: Any, budget: int = TEMPLATE_MAX_CHARS) -> int:
    """Rough printed size of ``obj``; stops counting once past ``budget``."""
    if isinstance(obj, str | bytes | bytearray):
        return len(obj)
    if isinstance(obj, list | tuple | set | frozenset | dict):
        total = len(obj)
        for item in obj.items() if isinstance(obj, dict) else obj:
            if total > budget:
                break
            total += _size(item, budget - total)
        return total
    return 1


def _check_size(obj: Any, what: str = "a value") -> Any:
    if _size(obj) > TEMPLATE_MAX_CHARS:
        raise _RenderLimit(f"{what} over {TEMPLATE_MAX_CHARS:,} characters")
    return obj


def _too_big_int(n: Any) -> bool:
    return isinstance(n, int) and abs(n) > TEMPLATE_MAX_CHARS


# printf-style (``%``, ``|format``) and str.format specs: a width or precision is an allocation size.
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")


def _check_format(fmt: Any, args: Sequence[Any] = ()) -> None:
    if not isinstance(fmt, str):
        return
    widths = [w for m in _PRINTF_SPEC.finditer(fmt) for w in m.groups() if w and w != "*"]
    widths += re.findall(r"\d+", " ".join(_FORMAT_SPEC.findall(fmt)))
    if any(int(w) > TEMPLATE_MAX_CHARS for w in widths) or any(_too_big_int(a) for a in args):
        raise _RenderLimit(f"a format width over {TEMPLATE_MAX_CHARS:,}")


def _check_binop(op: str, left: Any, right: Any) -> None:
    seq = str | bytes | list | tuple
    if op == "*":
        if isinstance(left, int) and isinstance(right, seq):
            left, right = right, left
        if isinstance(left, seq) and isinstance(right, int):
            if right > 0 and _size(left) * right > TEMPLATE_MAX_CHARS:
                raise _RenderLimit(f"a repetition over {TEMPLATE_MAX_CHARS:,} items")
        elif isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _RenderLimit("an integer product too large")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if right * left.bit_length() > _MAX_INT_BITS:
                raise _RenderLimit("a power too large")
    elif op == "+":
        if isinstance(left, seq) and isinstance(right, seq) and _size(left) + _size(right) > TEMPLATE_MAX_CHARS:
            raise _RenderLimit(f"a concatenation over {TEMPLATE_MAX_CHARS:,} characters")
    elif op == "%":
        _check_format(left, right if isinstance(right, tuple) else (right,))


# str methods whose integer argument is the size of what they allocate
_PADDING_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}


def _check_call(obj: Any, args: tuple, kwargs: dict) -> tuple:
    """Refuse a str method call that would allocate past the cap; returns the args to call with."""
    name = getattr(obj, "__name__", "")
    owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
    if not isinstance(owner, str | bytes):
        return args
    if name in _PADDING_METHODS or name in ("format", "format_map"):
        if any(_too_big_int(a) for a in (*args, *kwargs.values())):
            raise _RenderLimit(f"{name}() with a size over {TEMPLATE_MAX_CHARS:,}")
        if name in ("format", "format_map"):
            _check_format(owner)
    elif name == "join" and args:
        items = list(args[0])
        if _size(items) + len(owner) * len(items) > TEMPLATE_MAX_CHARS:
            raise _RenderLimit(f"a join over {TEMPLATE_MAX_CHARS:,} characters")
        args = (items, *args[1:])  # the iterable may be a one-shot generator, already consumed
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str | bytes) and isinstance(args[1], str | bytes):
        hits = owner.count(args[0]) if args[0] else len(owner) + 1
        if len(owner) + hits * (len(args[1]) - len(args[0])) > TEMPLATE_MAX_CHARS:
            raise _RenderLimit(f"a replace over {TEMPLATE_MAX_CHARS:,} characters")
    return args


def _guard_filter(name: str, func: Any) -> Any:
    """A builtin filter with the deadline checked, amplifying arguments refused and the result's size capped."""

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja passes the same arguments
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        lead = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0  # context/environment first
        vals = list(args[lead:])
        rest = vals[1:]
        if name in ("center", "batch", "slice", "indent") and any(
                _too_big_int(a) for a in (*rest, *kwargs.values())):
            raise _RenderLimit(f"|{name} with a size over {TEMPLATE_MAX_CHARS:,}")
        if vals and isinstance(vals[0], str) and name in ("indent", "wordwrap"):
            text = vals[0]
            if name == "indent":  # every line gets the indent
                width = (rest or [kwargs.get("width", 4)])[0]
                grow = (text.count("\n") + 1) * (width if isinstance(width, int) else _size(width))
            else:  # every wrap point gets the wrapstring
                width = (rest or [kwargs.get("width", 79)])[0]
                wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring")
                per = width if isinstance(width, int) and width > 0 else 1
                grow = (len(text) // per + text.count("\n") + 1) * _size(wrap or "\n")
            if len(text) + grow > TEMPLATE_MAX_CHARS:
                raise _RenderLimit(f"|{name} over {TEMPLATE_MAX_CHARS:,} characters")
        if name == "format" and vals:
            _check_format(vals[0], rest)
        if name == "join" and vals:
            sep = (rest or [kwargs.get("d", "")])[0]
            items = list(vals[0])
            if _size(items) + _size(sep) * len(items) > TEMPLATE_MAX_CHARS:
                raise _RenderLimit(f"|join over {TEMPLATE_MAX_CHARS:,} characters")
            args = (*args[:lead], items, *rest)
        if name == "replace" and len(vals) >= 3 and all(isinstance(v, str) for v in vals[:3]):
            text, old, new = vals[:3]
            hits = text.count(old) if old else len(text) + 1
            if len(text) + hits * (len(new) - len(old)) > TEMPLATE_MAX_CHARS:
                raise _RenderLimit(f"|replace over {TEMPLATE_MAX_CHARS:,} characters")
        return _check_size(func(*args, **kwargs), f"|{name}")

    return guarded


@pass_context
def _guarded_iter(context: Any, iterable: Any) -> Any:
    """Every ``{% for %}`` iterates through this, so nested loops hit the deadline.

    ``pass_context`` keeps Jinja from evaluating it at compile time."""
    for i, item in enumerate(iterable):
        if not i & 255:
            _tick()
        yield item


@pass_context
def _guarded_concat(context: Any, parts: Any) -> str:
    """``a ~ b`` with the result size checked before it is built."""
    _tick()
    if sum(_size(p) for p in parts) > TEMPLATE_MAX_CHARS:
        raise _RenderLimit(f"a concatenation over {TEMPLATE_MAX_CHARS:,} characters")
    return _check_size("".join(str(p) for p in parts))


class _RaisedByTemplate(TemplateError):
    """What ``raise_exception("...")`` raises: the template refusing the conversation, not a bug in it."""


def _raise_exception(message: Any) -> None:
    """``raise_exception("...")``, the Hugging Face template convention for a refused conversation."""
    raise _RaisedByTemplate(str(message))


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox plus size and time bounds.

    Sizes: ``*``, ``**``, ``+`` and ``%`` are intercepted and refuse results past
    :data:`TEMPLATE_MAX_CHARS` (or absurd integers) before computing them; so do
    padding/format/join/replace string methods and filters, and ``~``. Time: the
    deadline of the current render (``_DEADLINE``) is checked in the hooks every
    template runs through — calls, operators, attribute and item lookups, filters,
    every 256 iterations of each ``{% for %}`` — and per output chunk.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=lambda v: _check_size(v, "an output value"))
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["vnmini_iter"] = _guarded_iter
        self.filters["vnmini_concat"] = _guarded_concat
        self.globals["raise_exception"] = _raise_exception

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Loops and ``~`` have no sandbox hook: route them through guarded filters.
        tree = super()._parse(source, name, filename)
        for node in list(tree.find_all(nodes.For)):
            node.iter = nodes.Filter(node.iter, "vnmini_iter", [], [], None, None, lineno=node.lineno)

        def guard(value: Any) -> Any:
            if isinstance(value, nodes.Concat):
                return nodes.Filter(nodes.Tuple(value.nodes, "load", lineno=value.lineno), "vnmini_concat",
                                    [], [], None, None, lineno=value.lineno)
            return value

        for parent in [tree, *tree.find_all(nodes.Node)]:
            for field, value in parent.iter_fields():
                if isinstance(value, list):
                    value[:] = [guard(v) for v in value]
                else:
                    setattr(parent, field, guard(value))
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    # Dunder parameter names, as in Jinja: a template may pass any keyword (``obj=``, ``context=``) through.
    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        args = _check_call(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


@functools.lru_cache(maxsize=1)
def _sandbox() -> _BoundedSandbox:
    return _BoundedSandbox()


def _reason(e: BaseException) -> str:
    """The short reason shown in the error line."""
    msg = " ".join(str(e).split())[:160]
    if isinstance(e, _RenderLimit):
        return msg
    if isinstance(e, TemplateSyntaxError):
        return f"syntax error on line {e.lineno}: {msg}"
    if isinstance(e, _RaisedByTemplate):
        return f"raise_exception: {msg}"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@functools.lru_cache(maxsize=64)
def _compiled(template: str):
    return _sandbox().from_string(template)


def render_chat_template(template: str, source: str, fix: str, **context: Any) -> str:
    """Render ``template`` with ``context`` under the bounds above; failures name ``source`` and say ``fix``."""
    token = _DEADLINE.set(time.monotonic() + TEMPLATE_MAX_SECONDS)
    try:
        compiled = _compiled(template)
        out: list[str] = []
        size = 0
        for chunk in compiled.generate(**context):
            size += len(chunk)
            if size > TEMPLATE_MAX_CHARS:
                raise _RenderLimit(f"output over {TEMPLATE_MAX_CHARS:,} characters")
            _tick()
            out.append(chunk)
    except VnminiError:
        raise
    except Exception as e:  # anything the template can raise: sandbox, undefined, type, limits
        raise VnminiError(f"{source}: the chat template failed to render ({_reason(e)}); {fix}") from e
    finally:
        _DEADLINE.reset(token)
    return "".join(out)
