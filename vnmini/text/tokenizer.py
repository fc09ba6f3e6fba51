"""The tokenizer as every other part of vnmini sees it.

:class:`VnTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (byte-level
BPE) with what vnmini needs around it: Vietnamese normalization before every
encode, the special-token ids, the ChatML chat template (Jinja, the same string
that goes into ``tokenizer_config.json`` and the GGUF), the name of the
llama.cpp pre-tokenizer it was trained for, a content hash used to refuse shard
sets or teachers made with another tokenizer, and per-token UTF-8 byte lengths
for bits-per-byte.

    tok = VnTokenizer.load("ckpt/")            # or a tokenizer.json file
    ids = tok.encode("Xin chào", add_bos=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Chào"}])
    tok.save("ckpt/")                           # tokenizer.json + tokenizer_config.json

Chat templates are untrusted input (any tokenizer_config.json, chat_template.jinja
or GGUF can carry one): they render through :mod:`vnmini.text.chat_template`
(Jinja's immutable sandbox, bounded output size and time, compiled once), and any
failure is one :class:`VnminiError` naming the tokenizer's source.

Training a new BPE lives in :mod:`vnmini.text.tokenizer_train`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from vnmini.atomic import write_json, write_text
from vnmini.errors import VnminiError
from vnmini.text.chat_template import render_chat_template
from vnmini.text.normalization import normalize

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START, IM_END]

DEFAULT_SYSTEM_PROMPT = "Bạn là một trợ lý hữu ích, trả lời bằng tiếng Việt."

# ChatML. BOS comes from the template so that llama.cpp (which renders the
# template and then tokenizes with special tokens parsed, no extra BOS) and we
# produce the same ids. A system turn is added only if the caller gives one.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ------------------------------------------------------- template sandbox
# Chat templates come from files anyone can hand us (tokenizer_config.json,
# chat_template.jinja, a GGUF's metadata), so rendering is bounded: Jinja's
# immutable sandbox stops attribute escapes but not a template that allocates
# gigabytes or loops for hours, hence the size and time limits below.
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-char table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


class VnTokenizer:
    """Byte-level BPE + vnmini conventions. See module docstring."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str = CHAT_TEMPLATE,
        pre_tokenizer_name: str = "gpt-2",
        tone_style: str = "new",
        source: str = "<memory>",
    ) -> None:
        self.hf = tokenizer
        self.chat_template = chat_template
        self.pre_tokenizer_name = pre_tokenizer_name
        self.tone_style = tone_style
        self.source = source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        missing = [t for t in (BOS_TOKEN, EOS_TOKEN) if t not in vocab]
        if missing:
            raise VnminiError(
                f"{source}: tokenizer lacks special tokens {missing}; train it with `vnmini tokenizer train`."
            )
        self.bos_id = vocab[BOS_TOKEN]
        self.eos_id = vocab[EOS_TOKEN]
        self.pad_id = vocab.get(PAD_TOKEN, self.eos_id)
        self.im_start_id = vocab.get(IM_START)
        self.im_end_id = vocab.get(IM_END)

    # ----------------------------------------------------------------- basics
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generation: EOS and the end of a chat turn."""
        return [i for i in (self.eos_id, self.im_end_id) if i is not None]

    @property
    def special_ids(self) -> set[int]:
        vocab = self.hf.get_vocab(with_added_tokens=True)
        return {vocab[t] for t in SPECIAL_TOKENS if t in vocab}

    def normalize(self, text: str) -> str:
        return normalize(text, tone_style=self.tone_style)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Normalize then tokenize. Special-token strings in ``text`` become their ids."""
        ids = self.hf.encode(self.normalize(text), add_special_tokens=False).ids
        if add_bos:
            ids = [self.bos_id] + ids
        if add_eos:
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Parallel (Rust threads) tokenization of already-normalized texts."""
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self.hf.id_to_token(idx)

    # ---------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
    ) -> str:
        """Render messages with the Jinja chat template (contents normalized).

        The template runs in a bounded immutable sandbox
        (:func:`vnmini.text.chat_template.render_chat_template`); any failure is one
        :class:`VnminiError` naming ``self.source``.
        """
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise VnminiError(f"chat message {m!r}: each message needs 'role' and 'content'.")
        msgs = [{"role": m["role"], "content": self.normalize(str(m["content"]))} for m in messages]
        return render_chat_template(self.chat_template, self.source, self._template_fix(), messages=msgs,
                                    add_generation_prompt=add_generation_prompt, bos_token=BOS_TOKEN,
                                    eos_token=EOS_TOKEN)

    def _template_fix(self) -> str:
        if self.source.endswith(".gguf"):
            return ("fix chat_template in the source checkpoint's tokenizer_config.json / chat_template.jinja "
                    "and re-export the GGUF")
        return "fix chat_template in tokenizer_config.json / chat_template.jinja"

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.hf.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False).ids

    # ---------------------------------------------------------- bookkeeping
    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte count of each token id (0 for special tokens), for bits per byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = self.special_ids
        for tok, idx in self.hf.get_vocab(with_added_tokens=True).items():
            if idx in specials or idx >= len(out):
                continue
            if all(ch in UNICODE_TO_BYTE for ch in tok):
                out[idx] = len(tok)
            else:  # an added non-byte-level token: count its UTF-8 bytes
                out[idx] = len(tok.encode("utf-8"))
        return out

    def token_byte_strings(self) -> list[bytes]:
        """Raw bytes of every token (specials as their UTF-8 text), id order."""
        vocab = self.hf.get_vocab(with_added_tokens=True)
        out = [b""] * self.vocab_size
        specials = self.special_ids
        for tok, idx in vocab.items():
            if idx in specials or not all(ch in UNICODE_TO_BYTE for ch in tok):
                out[idx] = tok.encode("utf-8")
            else:
                out[idx] = bytes(UNICODE_TO_BYTE[ch] for ch in tok)
        return out

    @cached_property
    def hash(self) -> str:
        """Content hash of vocab + merges + specials: equal hash = same token ids."""
        data = json.loads(self.hf.to_str())
        model = data.get("model", {})
        core = {
            "vocab": model.get("vocab"),
            "merges": model.get("merges"),
            "added": [(t["id"], t["content"]) for t in data.get("added_tokens", [])],
            "pre": self.pre_tokenizer_name,
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ I/O
    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (HF layout) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "tokenizer.json", self.hf.to_str(pretty=False))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
            "chat_template": self.chat_template,
            "vnmini_pre_tokenizer": self.pre_tokenizer_name,
            "vnmini_tone_style": self.tone_style,
        }
        write_json(folder / "tokenizer_config.json", config)
        write_json(
            folder / "special_tokens_map.json",
            {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
             "additional_special_tokens": [IM_START, IM_END]},
        )

    @classmethod
    def load(cls, path: str | Path) -> VnTokenizer:
        """Load from a folder (HF layout, transformers 4 or 5) or a ``tokenizer.json`` file."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        tok_file = path / "tokenizer.json" if path.is_dir() else path
        if not tok_file.is_file():
            raise VnminiError(f"{tok_file}: no tokenizer.json here; train one with `vnmini tokenizer train` "
                              "or pass a checkpoint folder.")
        try:
            hf = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise VnminiError(f"{tok_file}: not a valid tokenizers JSON ({str(e)[:80]}); "
                              "re-create it with `vnmini tokenizer train`.") from e
        config: dict = {}
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise VnminiError(f"{cfg_file}: invalid JSON ({e.msg}); fix or delete it.") from e
        template = config.get("chat_template")
        jinja_file = folder / "chat_template.jinja"  # transformers 5 layout
        if not template and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # HF allows [{"name":..., "template":...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        return cls(
            hf,
            chat_template=template or CHAT_TEMPLATE,
            pre_tokenizer_name=config.get("vnmini_pre_tokenizer", "gpt-2"),
            tone_style=config.get("vnmini_tone_style", "new"),
            source=str(tok_file),
        )
