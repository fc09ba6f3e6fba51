"""An Ollama ``Modelfile`` beside a GGUF, with a Go-template ``TEMPLATE`` that renders
exactly what the GGUF's Jinja chat template renders.

    from vnmini.export.ollama import write_modelfile
    path = write_modelfile("runs/quickstart/export/chat-q4_0.gguf")   # -> chat-q4_0.Modelfile
    # then: ollama create vnmini-chat -f runs/quickstart/export/chat-q4_0.Modelfile

CLI: ``vnmini export gguf CKPT -o chat.gguf --ollama``.

Why: a GGUF imported into Ollama without a ``TEMPLATE`` gets ``{{ .Prompt }}`` (or a
guess), the most-reported cause of answers that never end or stop at once. Ollama
templates are Go ``text/template``; GGUFs carry Jinja. There is no general
translation, so this module recognises the template **by behaviour**: it renders
probe conversations (system or not, multi-turn, Vietnamese, multi-line) with the
Jinja template in vnmini's bounded sandbox and compares them with the families it
knows how to write in Go — ChatML (vnmini's own, Qwen2 with its default system turn),
Llama-3 and Gemma (system folded into the first user turn; Gemma-2 refuses system
messages, Gemma-3 folds them). Anything else is refused with one line; there is no
guessing. The test suite renders the written ``TEMPLATE`` with Go's own
``text/template`` in Ollama's data shape and compares it with Jinja character for
character and token for token (tests/test_ollama.py).

Ollama facts this relies on (its ``template/template.go`` and ``server/prompt.go``):
the template receives ``.Messages`` (every message, system ones included, consecutive
same-role messages joined by a blank line) with ``.Role``/``.Content``, plus ``.System``;
the Modelfile's ``SYSTEM`` is prepended as a system message when a chat has none; the
prompt is tokenized with special tokens parsed and BOS added when the GGUF's
``tokenizer.ggml.add_bos_token`` says so. That last point is why the ``TEMPLATE`` leaves
out the BOS the Jinja template writes when the file adds BOS itself.

Known, documented limits: Go templates have no ``trim``, so where a Jinja template
strips whitespace around messages (Llama-3, Gemma) Ollama sends it as typed (the
Modelfile says so in a comment); Ollama does not apply vnmini's Vietnamese
normalization (most input methods type NFC already; ``vnmini serve`` normalizes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vnmini.atomic import write_text
from vnmini.errors import VnminiError
from vnmini.outputs import check_output
from vnmini.runtime.sampling import DEFAULTS
from vnmini.text.chat_template import render_chat_template
from vnmini.text.tokenizer import DEFAULT_SYSTEM_PROMPT

Messages = Sequence[dict]

# Probe conversations: every shape the Go template must get right.
_SYS = {"role": "system", "content": "Bạn là trợ lý pháp luật.\nTrả lời ngắn gọn."}
_U1 = {"role": "user", "content": "Xin chào! Luật Dân sự quy định gì?"}
_A1 = {"role": "assistant", "content": "Chào bạn.\nBộ luật quy định địa vị pháp lý của cá nhân."}
_U2 = {"role": "user", "content": "Điều 2 nói gì về quyền dân sự? 😊"}
PROBES: tuple[tuple[dict, ...], ...] = (
    (_U1,), (_SYS, _U1), (_U1, _A1, _U2), (_SYS, _U1, _A1, _U2),
)
_WS_PROBE = ({"role": "user", "content": "  Xin chào  "},)  # tells a template that trims content


def _has_system(msgs: Messages) -> bool:
    return bool(msgs) and msgs[0]["role"] == "system"


# ------------------------------------------------------------------ families
# Each family: a Python spec of what its Go template renders, and the Go template.
# ``bos`` is literal text written first; ``default_system`` a system turn the
# template adds when the chat has none (Qwen2's "You are a helpful assistant.").
def _chatml_py(msgs: Messages, bos: str, default_system: str | None) -> str:
    out = bos
    if default_system is not None and not _has_system(msgs):
        out += f"<|im_start|>system\n{default_system}<|im_end|>\n"
    out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return out + "<|im_start|>assistant\n"


def _chatml_go(bos: str, default_system: str | None) -> str:
    head = ""
    if default_system is not None:
        head = ('{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                f"<|im_start|>system\n{default_system}<|im_end|>\n{{{{ end }}}}")
    return (bos + head + "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n")


def _llama3_py(msgs: Messages, bos: str, default_system: str | None) -> str:
    body = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in msgs)
    return bos + body + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _llama3_go(bos: str, default_system: str | None) -> str:
    return (bos + "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
            "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def _gemma_py(msgs: Messages, bos: str, default_system: str | None) -> str:
    prefix, loop = "", list(msgs)
    if _has_system(msgs):
        prefix, loop = msgs[0]["content"] + "\n\n", loop[1:]
    out = bos
    for i, m in enumerate(loop):
        role = "model" if m["role"] == "assistant" else m["role"]
        out += f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{m['content']}<end_of_turn>\n"
    return out + "<start_of_turn>model\n"


def _gemma_go(bos: str, default_system: str | None) -> str:
    # A system message at index 0 is not a turn: its text opens the next message (index 1).
    return (bos + '{{ $sys := and .Messages (eq (index .Messages 0).Role "system") }}'
            "{{ range $i, $m := .Messages }}{{ if not (and $sys (eq $i 0)) }}"
            '<start_of_turn>{{ if eq $m.Role "assistant" }}model{{ else }}{{ $m.Role }}{{ end }}\n'
            "{{ if and $sys (eq $i 1) }}{{ (index $.Messages 0).Content }}\n\n{{ end }}"
            "{{ $m.Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n")


@dataclass(frozen=True)
class Family:
    name: str
    render: Callable[[Messages, str, str | None], str]
    go: Callable[[str, str | None], str]
    end_of_turn: str  # the token that ends a turn: a PARAMETER stop


FAMILIES = (
    Family("chatml", _chatml_py, _chatml_go, "<|im_end|>"),
    Family("llama3", _llama3_py, _llama3_go, "<|eot_id|>"),
    Family("gemma", _gemma_py, _gemma_go, "<end_of_turn>"),
)


@dataclass(frozen=True)
class Translation:
    """A Jinja template recognised as ``family``; ``go_template(with_bos)`` writes it in Go."""

    family: Family
    bos: str  # what the Jinja template writes first ('' or the BOS token)
    default_system: str | None
    system_supported: bool  # False: the Jinja template refuses system messages (Gemma-2)
    trims: bool  # the Jinja template strips whitespace around message contents

    def go_template(self, with_bos: bool = True) -> str:
        return self.family.go(self.bos if with_bos else "", self.default_system)

    def render(self, msgs: Messages) -> str:
        return self.family.render(msgs, self.bos, self.default_system)


def _chatml_default_system(rendered: str, bos: str) -> str | None:
    head = bos + "<|im_start|>system\n"
    if rendered.startswith(head) and "<|im_end|>" in rendered[len(head):]:
        return rendered[len(head):].split("<|im_end|>", 1)[0]
    return None


def translate(template: str, bos_token: str, eos_token: str, source: str = "the chat template") -> Translation:
    """Recognise ``template`` as a family with a Go twin, or raise one VnminiError naming ``source``."""
    fix = "fix the chat template, or write the Modelfile's TEMPLATE by hand"

    def jinja(msgs: Messages) -> str | None:
        try:
            return render_chat_template(template, source, fix, messages=[dict(m) for m in msgs],
                                        add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token)
        except VnminiError:
            return None  # the template refuses this conversation (raise_exception) or fails on it

    if not template:
        raise VnminiError(f"{source}: has no chat template, so there is nothing to translate for Ollama; "
                          "export from a checkpoint whose tokenizer_config.json has chat_template.")
    got = [jinja(p) for p in PROBES]
    if all(g is None for p, g in zip(PROBES, got, strict=True) if not _has_system(p)):
        raise VnminiError(f"{source}: the chat template fails on a plain user/assistant chat; {fix}.")
    ws_got = jinja(_WS_PROBE)
    for fam in FAMILIES:
        for bos in dict.fromkeys([bos_token, ""]):
            default = _chatml_default_system(got[0] or "", bos) if fam.name == "chatml" else None
            cand = Translation(fam, bos, default, system_supported=True, trims=False)
            ok, refused_system = True, False
            for p, g in zip(PROBES, got, strict=True):
                if g is None and _has_system(p):
                    refused_system = True
                elif g != cand.render(p):
                    ok = False
                    break
            if not ok:
                continue
            stripped = tuple({**m, "content": m["content"].strip()} for m in _WS_PROBE)
            if ws_got == cand.render(_WS_PROBE):
                trims = False
            elif ws_got == cand.render(stripped):
                trims = True
            else:
                continue
            return Translation(fam, bos, default, system_supported=not refused_system, trims=trims)
    names = ", ".join(f.name for f in FAMILIES)
    raise VnminiError(f"{source}: the chat template is none of the formats vnmini can write as an Ollama "
                      f"TEMPLATE ({names}); write the Modelfile's TEMPLATE by hand (see Ollama's "
                      "docs/template.md), or export without --ollama.")


# ------------------------------------------------------------------ GGUF side
@dataclass(frozen=True)
class GGUFChatInfo:
    """What a Modelfile needs from a GGUF's metadata."""

    template: str
    bos: str
    eos: str
    add_bos: bool
    stop_tokens: tuple[str, ...]  # EOS, EOT, EOM as token strings
    context_length: int


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_metadata(path: Path) -> dict:
    """Every key/value of a GGUF header (arrays of strings as lists, other arrays skipped).

    gguf-py's ``GGUFReader`` maps every tensor and vocabulary entry up front (13 s for a
    152k-token vocabulary on 2 cores); a Modelfile needs a few keys, read here in ~0.1 s."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF":
            raise VnminiError(f"{path}: not a GGUF file (no GGUF magic); export one with `vnmini export gguf`.")
        version, _, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version < 2:
            raise VnminiError(f"{path}: GGUF version {version} is too old to read; re-export it.")
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", m, pos)
            pos += 8 + n
            return m[pos - n:pos].decode("utf-8", "replace")

        def value(kind: int) -> object:
            nonlocal pos
            if kind == 8:
                return string()
            if kind == 9:
                elem, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if elem == 8:
                    return [string() for _ in range(count)]
                if elem not in _SCALARS:
                    raise ValueError(f"array of type {elem}")
                pos += struct.calcsize(_SCALARS[elem]) * count  # numeric arrays (scores, types): not needed
                return None
            fmt = _SCALARS[kind]
            (v,) = struct.unpack_from(fmt, m, pos)
            pos += struct.calcsize(fmt)
            return v

        out: dict = {}
        try:
            for _ in range(n_kv):
                key = string()
                (kind,) = struct.unpack_from("<I", m, pos)
                pos += 4
                out[key] = value(kind)
        except (struct.error, KeyError, ValueError) as e:
            raise VnminiError(f"{path}: damaged GGUF header ({type(e).__name__}: {e}); re-export it.") from None
    return out


def read_gguf_chat_info(path: str | Path) -> GGUFChatInfo:
    """Chat template, specials, add-BOS flag and context length of a GGUF file."""
    meta = _gguf_metadata(Path(path))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    arch = meta.get("general.architecture", "llama")

    def token(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if not isinstance(add_bos, bool):  # absent: llama.cpp decides by vocabulary type and pre-tokenizer; ask it
        from vnmini.runtime.gguf_backend import open_llama

        llm = open_llama(path, n_ctx=512, f32_cache=False, logits_all=False, vocab_only=True)
        ids = llm.tokenize(b"a", add_bos=True, special=False)
        add_bos = bool(ids) and ids[0] == llm.token_bos()
    stops = [token(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id",
                                "tokenizer.ggml.eos_token_id")]
    return GGUFChatInfo(template=meta.get("tokenizer.chat_template") or "",
                        bos=token("tokenizer.ggml.bos_token_id"), eos=token("tokenizer.ggml.eos_token_id"),
                        add_bos=add_bos, stop_tokens=tuple(dict.fromkeys(s for s in stops if s)),
                        context_length=int(meta.get(f"{arch}.context_length", 2048)))


def _quoted(value: str, what: str, source: Path) -> str:
    if '"""' in value:
        raise VnminiError(f"{source}: the {what} contains '\"\"\"', which a Modelfile cannot quote; "
                          "write the Modelfile by hand.")
    return f'"""{value}"""'


def modelfile_text(gguf_path: str | Path, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The Modelfile for ``gguf_path`` (``FROM`` it by a path relative to the Modelfile's folder)."""
    gguf_path = Path(gguf_path)
    info = read_gguf_chat_info(gguf_path)
    tr = translate(info.template, info.bos, info.eos, source=f"{gguf_path} (tokenizer.chat_template)")
    if info.add_bos and tr.bos != info.bos:
        raise VnminiError(f"{gguf_path}: the file adds BOS ({info.bos!r}) when tokenizing but its chat template "
                          "does not start with it, so Ollama would get a different prompt; "
                          "fix add_bos_token or the template and re-export.")
    # Ollama adds BOS itself when the file says so; writing it again would double it.
    go = tr.go_template(with_bos=not info.add_bos)
    if "{{" in (tr.default_system or "") + tr.bos:
        raise VnminiError(f"{gguf_path}: the chat template's literal text contains '{{{{', which a Go template "
                          "would read as an action; write the Modelfile's TEMPLATE by hand.")
    stops = list(dict.fromkeys([tr.family.end_of_turn, *info.stop_tokens]))
    for s in stops:
        if '"' in s or "\n" in s:
            raise VnminiError(f"{gguf_path}: stop token {s!r} cannot be written as a Modelfile PARAMETER; "
                              "write the Modelfile by hand.")
    lines = [
        f"# Ollama Modelfile for {gguf_path.name}, written by vnmini (`vnmini export gguf --ollama`).",
        f"#   ollama create {gguf_path.stem} -f {gguf_path.stem}.Modelfile && ollama run {gguf_path.stem}",
        f"# TEMPLATE: the GGUF's Jinja chat template ({tr.family.name} format) in Go text/template form;",
        "# vnmini's tests render both for the same chats and compare them character for character.",
    ]
    if info.add_bos:
        lines.append(f"# No {info.bos} in TEMPLATE: Ollama adds it when tokenizing (tokenizer.ggml.add_bos_token).")
    if tr.trims:
        lines.append("# The Jinja template strips spaces around each message; Go templates cannot, so Ollama "
                     "sends messages as typed.")
    if not tr.system_supported:
        lines.append("# The Jinja template refuses system messages, so no SYSTEM is set; one sent anyway opens "
                     "the first user turn.")
    lines += [f"FROM ./{gguf_path.name}", f"TEMPLATE {_quoted(go, 'chat template', gguf_path)}"]
    if system and tr.system_supported:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt', gguf_path)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    # vnmini's sampling defaults, so Ollama answers like `vnmini chat` (Ollama's repeat_penalty
    # looks back 64 tokens, ours over the whole answer: close, not identical).
    lines += [f"PARAMETER num_ctx {info.context_length}", f"PARAMETER temperature {DEFAULTS.temperature:g}",
              f"PARAMETER top_k {DEFAULTS.top_k}", f"PARAMETER top_p {DEFAULTS.top_p:g}",
              f"PARAMETER repeat_penalty {DEFAULTS.repetition_penalty:g}"]
    return "\n".join(lines) + "\n"


def modelfile_path(gguf_path: str | Path) -> Path:
    """``chat-q4_0.gguf`` -> ``chat-q4_0.Modelfile`` beside it (one per GGUF, so quants don't collide)."""
    p = Path(gguf_path)
    return p.with_name(p.stem + ".Modelfile")


def write_modelfile(gguf_path: str | Path, out: str | Path | None = None, system: str | None = DEFAULT_SYSTEM_PROMPT,
                    force: bool = False) -> Path:
    """Write the Modelfile for ``gguf_path`` (default ``<stem>.Modelfile`` beside it) atomically; returns its path."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise VnminiError(f"{gguf_path}: no such .gguf file; export one with `vnmini export gguf`.")
    out = Path(out) if out is not None else modelfile_path(gguf_path)
    check_output(out, "file", force, flag="--ollama")
    text = modelfile_text(gguf_path, system=system)
    if out.parent.resolve() != gguf_path.parent.resolve():
        text = text.replace(f"FROM ./{gguf_path.name}", f"FROM {gguf_path.resolve()}")
    write_text(out, text)
    return out


def preflight(checkpoint: str | Path, gguf_out: str | Path, force: bool = False) -> Path:
    """Before a long export, refuse what :func:`write_modelfile` would refuse after it; returns the Modelfile path."""
    from vnmini.text.tokenizer import VnTokenizer

    out = modelfile_path(gguf_out)
    check_output(out, "file", force, flag="--ollama")
    tok = VnTokenizer.load(checkpoint)
    translate(tok.chat_template, tok.specials.bos or "", tok.specials.eos or "",
              source=f"{checkpoint} (chat_template)")
    return out
