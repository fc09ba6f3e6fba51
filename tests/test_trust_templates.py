"""Chat templates from untrusted files: every failure is one VnminiError naming the tokenizer's
source, and rendering is bounded in size and time (the immutable sandbox alone stops neither
``'x' * 300000000`` nor nested loops). The happy path renders exactly what plain Jinja does."""

from __future__ import annotations

import json
import time

import pytest

from vnmini.errors import VnminiError
from vnmini.text.chat_template import _compiled, render_chat_template
from vnmini.text.tokenizer import CHAT_TEMPLATE, VnTokenizer

SOURCE = "/models/evil/tokenizer.json"
MSGS = [{"role": "system", "content": "Trả lời ngắn."}, {"role": "user", "content": "Xin chào"}]


def with_template(tiny_tokenizer, template: str) -> VnTokenizer:
    return VnTokenizer(tiny_tokenizer.hf, chat_template=template, source=SOURCE)


def render_error(tok: VnTokenizer) -> str:
    with pytest.raises(VnminiError) as info:
        tok.apply_chat_template(MSGS)
    msg = str(info.value)
    assert msg.startswith(f"{SOURCE}: the chat template failed to render (") and "\n" not in msg, msg
    assert "fix chat_template in tokenizer_config.json / chat_template.jinja" in msg
    return msg


FAILING = {
    "syntax": ("{% for m in messages %}{{ m.content }}", "syntax error on line 1"),
    "unknown filter": ("{{ messages|no_such_filter }}", "No filter named"),
    "sandbox attribute": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
    "sandbox mutation": ("{{ messages.append({'role': 'x'}) }}", "SecurityError"),
    "undefined": ("{{ tools.name }}", "UndefinedError"),
    "type error": ("{{ 1 + messages[0]['content'] }}", "TypeError"),
    "zero division": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "raise_exception": ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                        "{% endif %}", "raise_exception: System role not supported"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", list(FAILING))
def test_every_failing_template_is_one_vnmini_error(tiny_tokenizer, kind):
    template, reason = FAILING[kind]
    msg = render_error(with_template(tiny_tokenizer, template))
    assert reason in msg, msg


# Sizes are just past the caps (1,000,000 characters, 2 s) so that a regression fails the test
# without exhausting the machine's memory; the loops without output would run for hours unbounded.
BOMBS = {
    "string repetition": "{{ 'x' * 300000000 }}",
    "repetition in a set": "{% set s = 'x' * 300000000 %}{{ s|length }}",
    "list repetition": "{{ (['x'] * 3000000)|length }}",
    "huge power": "{{ 7 ** 10000000 }}",
    "nested range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over one list": "{% set r = range(99999)|list %}{% for i in r %}{% for j in r %}{% endfor %}"
                                  "{% endfor %}",
    "nested range with output": "{% for i in range(1000) %}{% for j in range(1000) %}{{ j }}{% endfor %}"
                                "{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='ab') %}{% for i in range(22) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='ab') %}{% for i in range(22) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "padding filter": "{{ 'x'|center(3000000)|length }}",
    "padding method": "{{ 'x'.ljust(3000000)|length }}",
    "format width": "{{ '{:>3000000}'.format(1)|length }}",
    "printf width": "{{ ('%3000000d' % 1)|length }}",
    "join amplification": "{{ (range(100)|join('x' * 99999))|length }}",
    "integer squaring": "{% set ns = namespace(n=3) %}{% for i in range(22) %}{% set ns.n = ns.n * ns.n %}"
                        "{% endfor %}{{ ns.n > 0 }}",
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", list(BOMBS))
def test_size_and_time_bombs_stop_quickly(tiny_tokenizer, kind):
    tok = with_template(tiny_tokenizer, BOMBS[kind])
    t0 = time.perf_counter()
    msg = render_error(tok)
    assert time.perf_counter() - t0 < 5, msg
    assert any(w in msg for w in ("over 1,000,000", "longer than", "too large")), msg


def test_template_from_tokenizer_config_names_the_file(tiny_checkpoint):
    cfg_file = tiny_checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["chat_template"] = "{{ raise_exception('no chat here') }}"
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    tok = VnTokenizer.load(tiny_checkpoint)
    with pytest.raises(VnminiError, match="tokenizer.json: the chat template failed to render .*no chat here"):
        tok.encode_chat(MSGS)


def test_cli_prints_one_line_and_exits_2(tiny_checkpoint, cli):
    (tiny_checkpoint / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{{ messages.__class__.__mro__ }}"}), encoding="utf-8")
    code, out, err = cli("generate", tiny_checkpoint, "Xin chào", "--chat", "-n", "3", "-t", "0")
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and str(tiny_checkpoint) in lines[0]
    assert "chat template failed to render (SecurityError" in lines[0], lines[0]


REALISTIC = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}"
    "{%- for m in messages if m.role != 'tool' %}{% set ns.n = ns.n + 1 %}"
    "[{{ loop.index0 }}/{{ loop.length }}{{ '!' if loop.last else '' }}] {{ m['role'] ~ ': ' ~ m.content|trim }}\n"
    "{%- else %}none{% endfor %}"
    "{% for k, v in {'a': 1, 'b': [1, 2]}.items() %}{{ k }}={{ v|join(',') if v is iterable else v }};{% endfor %}"
    "{% for item in tree recursive %}{{ item.name }}{% if item.children %}({{ loop(item.children) }}){% endif %}"
    "{% endfor %}{{ tools|tojson }} {{ '%s-%d' % ('a', 3) }} {{ '{}+{}'.format(1, 2) }} {{ 'ab' * 3 }} "
    "{{ 2 ** 10 }} {{ [1] + [2] }} {{ 'x'|center(5) }}|{{ 'a b'|replace(' ', '_') }}|{{ 'a\nb'|indent(2) }}"
    "{{ ns.n }}{% macro hi(n) %}hi {{ n }}{{ caller() if caller else '' }}{% endmacro %}{% call hi('x') %}!"
    "{% endcall %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_happy_path_renders_like_plain_jinja_and_compiles_once(tiny_tokenizer):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    ctx = dict(messages=MSGS, add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
               tools=[{"name": "f"}], tree=[{"name": "a", "children": [{"name": "b", "children": []}]}])
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for template in (CHAT_TEMPLATE, REALISTIC):
        ref = plain.from_string(template).render(**ctx)
        # tree/tools are not passed by apply_chat_template: compare through the compiled template itself
        assert render_chat_template(template, "t", "fix it", **ctx) == ref
    tok = with_template(tiny_tokenizer, CHAT_TEMPLATE)
    first = tok.apply_chat_template(MSGS)
    assert first == plain.from_string(CHAT_TEMPLATE).render(messages=MSGS, add_generation_prompt=True,
                                                            bos_token="<s>", eos_token="</s>")
    compiled = _compiled(CHAT_TEMPLATE)
    assert tok.apply_chat_template(MSGS) == first and _compiled(CHAT_TEMPLATE) is compiled  # compiled once
    tok.chat_template = "{{ messages|length }}"
    assert tok.apply_chat_template(MSGS) == "2"  # a changed template is recompiled


def test_long_but_legitimate_content_renders(tiny_tokenizer):
    tok = with_template(tiny_tokenizer, CHAT_TEMPLATE)
    big = "Điều 1. " * 50_000  # 400k characters, under the cap
    out = tok.apply_chat_template([{"role": "user", "content": big}])
    assert len(out) > 400_000


def test_export_with_a_failing_template_leaves_nothing(tiny_checkpoint, tmp_path, cli):
    """The GGUF is verified (chat prompt included) under its temp name: a failing template never lands."""
    cfg_file = tiny_checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["chat_template"] = "{% for m in messages %}{{ m.content | no_such_filter }}{% endfor %}"
    cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = cli("export", "gguf", tiny_checkpoint, "-o", out / "m.gguf", "--quant", "f32")
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "chat template failed to render" in errors[0], err
    assert sorted(p.name for p in out.iterdir()) == []
