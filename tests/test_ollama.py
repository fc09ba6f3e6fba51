"""The Ollama Modelfile: its Go ``TEMPLATE`` renders what the Jinja chat template renders.

Oracle: Go's own ``text/template`` (Debian ``golang-go``), driven by a small Go program that
hands the template Ollama's data shape (``template/template.go`` and ``server/routes.go``:
the Modelfile's SYSTEM prepended when a chat has none, ``collate`` joining system messages
into ``.System`` and merging same-role neighbours, ``.Messages`` with ``.Role``/``.Content``,
``missingkey=zero``, the ``json`` function). Compared character for character with vnmini's
Jinja rendering (add_generation_prompt=True), and token for token through llama.cpp's own
tokenizer on the GGUF (special tokens parsed, BOS added as the file says, as Ollama does).
No Ollama needed; skipped cleanly without ``go``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vnmini.errors import VnminiError
from vnmini.export.ollama import modelfile_path, read_gguf_chat_info, translate, write_modelfile
from vnmini.text.chat_template import render_chat_template
from vnmini.text.tokenizer import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.timeout(240)

GO_HARNESS = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	System   string    `json:"system"` // the Modelfile's SYSTEM ("" = none)
	Messages []Message `json:"messages"`
}

// Ollama's collate: every system message joins .System; consecutive same-role messages merge.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	outs := []string{}
	for _, c := range cases {
		msgs := c.Messages
		if c.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]Message{{Role: "system", Content: c.System}}, msgs...)
		}
		system, collated := collate(msgs)
		t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template)
		if err != nil {
			panic(err)
		}
		var b strings.Builder
		data := map[string]any{"System": system, "Messages": collated, "Tools": nil, "Response": ""}
		if err := t.Execute(&b, data); err != nil {
			panic(err)
		}
		outs = append(outs, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(outs); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """``go_render(template, conversations, system="")`` -> what Ollama's Go templating makes of each."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go's text/template: apt-get install golang-go")
    d = tmp_path_factory.mktemp("goharness")
    (d / "main.go").write_text(GO_HARNESS)
    env = {**os.environ, "GOPROXY": "off", "GO111MODULE": "off",
           "GOCACHE": os.environ.get("GOCACHE") or str(Path.home() / ".cache" / "go-build")}
    r = subprocess.run([go, "build", "-o", str(d / "harness"), str(d / "main.go")], capture_output=True,
                       text=True, timeout=180, env=env, cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]

    def render(template: str, conversations: list[list[dict]], system: str = "") -> list[str]:
        cases = [{"template": template, "system": system, "messages": c} for c in conversations]
        r = subprocess.run([str(d / "harness")], input=json.dumps(cases), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)

    return render


SYS = {"role": "system", "content": "Bạn là trợ lý pháp luật Việt Nam.\nHãy trả lời ngắn gọn."}
CONVERSATIONS = [
    [{"role": "user", "content": "Xin chào"}],
    [SYS, {"role": "user", "content": "Luật Dân sự quy định gì?"}],
    [{"role": "user", "content": "Hợp đồng là gì?"}, {"role": "assistant", "content": "Hợp đồng là sự thỏa thuận."},
     {"role": "user", "content": "Còn thủy lợi, khỏe mạnh, hòa bình? 😊"}],
    [SYS, {"role": "user", "content": "Điều 1.\nPhạm vi điều chỉnh"},
     {"role": "assistant", "content": "Bộ luật này quy định địa vị pháp lý…"},
     {"role": "user", "content": "Tiếp đi {{ .System }} <b>"}],  # Go/HTML syntax in content stays text
]


def parse_modelfile(text: str) -> dict:
    """The instructions of a Modelfile as Ollama's parser reads them (triple-quoted values verbatim)."""
    out: dict = {"PARAMETER": []}
    pos = 0
    while pos < len(text):
        m = re.compile(r'(#[^\n]*|(FROM|TEMPLATE|SYSTEM|PARAMETER) ("""|))\n?').match(text, pos)
        assert m, f"not a Modelfile line: {text[pos:pos + 60]!r}"
        pos = m.end()
        if m.group(1).startswith("#"):
            continue
        key = m.group(2)
        if m.group(3):  # a triple-quoted value runs to the next """ verbatim, newlines included
            pos = m.end(3)
            end = text.index('"""', pos)
            value, pos = text[pos:end], end + 3
            pos += text.startswith("\n", pos)
        else:
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            value, pos = text[pos:end], end + 1
        if key == "PARAMETER":
            out["PARAMETER"].append(tuple(value.split(" ", 1)))
        else:
            out[key] = value
    return out


@pytest.fixture
def vnmini_gguf(tmp_path, tiny_checkpoint):
    from vnmini.export import to_gguf

    return to_gguf(tiny_checkpoint, tmp_path / "chat.gguf", quant="f32", verify=False).path


def test_vnmini_gguf_modelfile_renders_like_jinja(vnmini_gguf, tiny_tokenizer, go_render):
    from llama_cpp import Llama

    path = write_modelfile(vnmini_gguf)
    assert path == modelfile_path(vnmini_gguf) == vnmini_gguf.with_name("chat.Modelfile")
    mf = parse_modelfile(path.read_text(encoding="utf-8"))
    assert mf["FROM"] == "./chat.gguf" and mf["SYSTEM"] == DEFAULT_SYSTEM_PROMPT
    params = mf["PARAMETER"]
    assert ("stop", '"<|im_end|>"') in params and ("stop", '"</s>"') in params
    assert ("num_ctx", "256") in params
    assert not mf["TEMPLATE"].startswith("<s>")  # Ollama adds BOS itself (add_bos_token), as llama.cpp does

    llm = Llama(str(vnmini_gguf), vocab_only=True, verbose=False)
    tok = tiny_tokenizer
    convs = [[{**m, "content": tok.normalize(m["content"])} for m in c] for c in CONVERSATIONS]
    # As Ollama runs it: the Modelfile's SYSTEM fills in where a chat has none.
    with_default = [c if c[0]["role"] == "system" else [{"role": "system", "content": mf["SYSTEM"]}, *c]
                    for c in convs]
    # And with no SYSTEM at all (`/set system ""`, or a Modelfile edited without it).
    for system, jinja_convs in ((mf["SYSTEM"], with_default), ("", convs)):
        got = go_render(mf["TEMPLATE"], convs, system=system)
        for conv, go_text in zip(jinja_convs, got, strict=True):
            jinja_text = tok.apply_chat_template(conv, add_generation_prompt=True)
            assert tok.specials.bos + go_text == jinja_text  # character for character
            ollama_ids = llm.tokenize(go_text.encode("utf-8"), add_bos=True, special=True)
            assert ollama_ids == tok.encode_chat(conv, add_generation_prompt=True)  # token for token


LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
         "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
         "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA2 = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
          "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim"
          " + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
FOREIGN = {  # name: (template, bos, eos, family, trims, system supported, default system)
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama3", True, True, None),
    "qwen2": (QWEN2, "", "<|im_end|>", "chatml", False, True, "You are a helpful assistant."),
    "gemma2": (GEMMA2, "<bos>", "<eos>", "gemma", True, False, None),
    "gemma3": (GEMMA3, "<bos>", "<eos>", "gemma", True, True, None),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_foreign_templates_translate_exactly(name, go_render):
    template, bos, eos, family, trims, system_ok, default = FOREIGN[name]
    tr = translate(template, bos, eos, source=name)
    assert (tr.family.name, tr.trims, tr.system_supported, tr.default_system) == (family, trims, system_ok, default)
    convs = [c for c in CONVERSATIONS if system_ok or c[0]["role"] != "system"]
    got = go_render(tr.go_template(with_bos=True), convs)
    for conv, go_text in zip(convs, got, strict=True):
        want = render_chat_template(template, name, "", messages=conv, add_generation_prompt=True,
                                    bos_token=bos, eos_token=eos)
        assert go_text == want, name


def test_real_qwen2_gguf_token_for_token(tmp_path, go_render):
    """llama.cpp's own Qwen2 vocabulary file (its real chat template), if the vocab cache has it."""
    from llama_cpp import Llama

    src = Path.home() / ".cache/vnmini/llama-vocab"
    found = sorted(src.glob("*/ggml-vocab-qwen2.gguf")) if src.is_dir() else []
    if not found:
        pytest.skip("llama.cpp's ggml-vocab-qwen2.gguf is not in the vocab cache (tests/test_vocab_fixtures.py)")
    gguf = tmp_path / "qwen2.gguf"
    shutil.copyfile(found[-1], gguf)
    mf = parse_modelfile(write_modelfile(gguf).read_text(encoding="utf-8"))
    assert ("stop", '"<|im_end|>"') in mf["PARAMETER"]
    llm = Llama(str(gguf), vocab_only=True, verbose=False)
    template = read_gguf_chat_info(gguf).template
    got = go_render(mf["TEMPLATE"], CONVERSATIONS)
    for conv, go_text in zip(CONVERSATIONS, got, strict=True):
        want = render_chat_template(template, "qwen2", "", messages=conv, add_generation_prompt=True,
                                    bos_token="", eos_token="<|endoftext|>")
        assert go_text == want
        assert (llm.tokenize(go_text.encode(), add_bos=True, special=True)
                == llm.tokenize(want.encode(), add_bos=False, special=True))


def test_unknown_template_is_refused_in_one_line():
    mistral = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
               "' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    with pytest.raises(VnminiError, match="none of the formats") as e:
        translate(mistral, "<s>", "</s>", source="mistral.gguf")
    assert "mistral.gguf" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(VnminiError, match="no chat template"):
        translate("", "<s>", "</s>")


def test_cli_export_gguf_ollama(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    code, stdout, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--quant", "f32", "--no-verify", "--ollama")
    assert code == 0, err
    mf = tmp_path / "m.Modelfile"
    assert mf.is_file() and "ollama create m -f m.Modelfile" in stdout
    assert parse_modelfile(mf.read_text(encoding="utf-8"))["FROM"] == "./m.gguf"
    # An existing Modelfile is refused before the export starts, and replaced with --force.
    out.unlink()
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--quant", "f32", "--no-verify", "--ollama")
    assert code == 2 and "m.Modelfile" in err and "--force" in err and not out.exists()
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--quant", "f32", "--no-verify", "--ollama",
                       "--force")
    assert code == 0, err


def test_cli_refuses_untranslatable_template_before_exporting(cli, tiny_checkpoint, tmp_path):
    cfg_path = tiny_checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["chat_template"] = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    out = tmp_path / "x.gguf"
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out, "--no-verify", "--ollama")
    assert code == 2 and "none of the formats" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "x.Modelfile").exists()
