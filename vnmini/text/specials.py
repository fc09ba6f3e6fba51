"""Which tokens play which role (BOS, EOS, pad, unk, end of turn) and the BOS rule, read
from a tokenizer's own files — never assumed.

Real checkpoints name their specials in ``tokenizer_config.json`` (a string, or an
AddedToken dict with ``content``), ``special_tokens_map.json`` and
``generation_config.json`` (``eos_token_id``: one id or several, e.g. Llama-3's
``<|end_of_text|>`` and ``<|eot_id|>``); whether BOS is added comes from
``add_bos_token`` or, failing that, from what the tokenizer's own post-processor does.

    specials = read_specials(Path("SmolLM2/"), hf_tokenizer)
    specials.bos, specials.eos, specials.eot, specials.add_bos   # '<|im_start|>', '<|im_end|>', (...), False
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from vnmini.errors import VnminiError

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START, IM_END]

# End-of-turn tokens of common chat templates (ChatML, Llama-3, Gemma, Phi-3): generation
# stops at them as at EOS, as llama.cpp does when it marks end-of-generation tokens.
KNOWN_EOT = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eom_id|>")


@dataclass(frozen=True)
class Specials:
    """Token strings by role, plus the BOS rule and extra stop ids."""

    bos: str | None = BOS_TOKEN
    eos: str | None = EOS_TOKEN
    pad: str | None = PAD_TOKEN
    unk: str | None = None
    eot: tuple[str, ...] = (IM_END,)
    add_bos: bool = True
    extra_stop_ids: tuple[int, ...] = field(default=())


VNMINI_SPECIALS = Specials()


def _content(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VnminiError(f"{path}: invalid JSON ({e}); fix or delete it.") from e
    return data if isinstance(data, dict) else {}


def read_config(folder: Path) -> dict:
    """``tokenizer_config.json`` of ``folder`` ({} if absent)."""
    return _read_json(folder / "tokenizer_config.json")


def read_specials(folder: Path, hf: Tokenizer, config: dict) -> Specials:
    """The roles of a tokenizer saved in ``folder`` (``config`` = its tokenizer_config.json)."""
    if "vnmini_pre_tokenizer" in config:  # written by vnmini: its own conventions, spelled out
        return Specials(bos=_content(config.get("bos_token")), eos=_content(config.get("eos_token")),
                        pad=_content(config.get("pad_token")), unk=_content(config.get("unk_token")),
                        eot=tuple(config.get("vnmini_eot_tokens", [IM_END])),
                        add_bos=bool(config.get("add_bos_token", True)))
    vocab = hf.get_vocab(with_added_tokens=True)
    smap = _read_json(folder / "special_tokens_map.json")
    gen = _read_json(folder / "generation_config.json")

    def role(name: str) -> str | None:
        return _content(config.get(name)) or _content(smap.get(name))

    bos, eos, pad, unk = role("bos_token"), role("eos_token"), role("pad_token"), role("unk_token")
    by_id = {i: t for t, i in vocab.items()}
    if eos is None and isinstance(gen.get("eos_token_id"), int):
        eos = by_id.get(gen["eos_token_id"])
    if bos is None and isinstance(gen.get("bos_token_id"), int):
        bos = by_id.get(gen["bos_token_id"])
    if bos is None and eos is None and not config and BOS_TOKEN in vocab and EOS_TOKEN in vocab:
        return VNMINI_SPECIALS  # a bare vnmini tokenizer.json (no config beside it)
    stop = gen.get("eos_token_id")
    stop_ids = tuple(int(i) for i in (stop if isinstance(stop, list) else [stop]) if isinstance(i, int))
    eot = tuple(t for t in KNOWN_EOT if t in vocab and t != eos)
    if "add_bos_token" in config:
        add_bos = bool(config["add_bos_token"])
    else:  # what the tokenizer's own post-processor does decides (Llama-3 adds BOS there, Qwen2 none)
        bos_id = vocab.get(bos) if bos else None
        enc = hf.encode("a", add_special_tokens=True).ids
        add_bos = bos_id is not None and bool(enc) and enc[0] == bos_id
    return Specials(bos=bos, eos=eos, pad=pad, unk=unk, eot=eot, add_bos=add_bos, extra_stop_ids=stop_ids)


def read_chat_template(folder: Path, config: dict) -> str | None:
    """The chat template: ``tokenizer_config.json`` (transformers 4) or ``chat_template.jinja`` (5)."""
    template = config.get("chat_template")
    jinja_file = folder / "chat_template.jinja"
    if not template and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    if isinstance(template, list):  # HF allows [{"name":..., "template":...}]
        template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
    return template or None
