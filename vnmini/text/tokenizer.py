"""The tokenizer as every other part of vnmini sees it.

:class:`VnTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` — vnmini's own
byte-level BPE or anyone's (GPT-2/Qwen2/Llama-3-style byte-level, or SentencePiece-style
``▁`` + byte fallback) — with what vnmini needs around it: Vietnamese normalization
before every encode, the roles of its special tokens and its BOS rule as its own files
say (:mod:`vnmini.text.specials`), its chat template (the same string that goes into
``tokenizer_config.json`` and the GGUF), the llama.cpp pre-tokenizer that splits like it
(or None), a content hash used to refuse shard sets or teachers made with another
tokenizer, and per-token UTF-8 byte counts for bits-per-byte. A GGUF vnmini can't
rebuild runs on :class:`vnmini.text.llamacpp_tokenizer.LlamaCppTokenizer`, which has
the same interface.

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
from vnmini.text.pretokenizers import detect_pre_tokenizer
from vnmini.text.specials import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END,
    IM_START,
    VNMINI_SPECIALS,
    Specials,
    read_chat_template,
    read_config,
    read_specials,
)

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
    """A ``tokenizers.Tokenizer`` (vnmini's or anyone's) + roles, template, normalization."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str = CHAT_TEMPLATE,
        pre_tokenizer_name: str | None = "gpt-2",
        tone_style: str = "new",
        source: str = "<memory>",
        specials: Specials = VNMINI_SPECIALS,
    ) -> None:
        self.hf = tokenizer
        self.chat_template = chat_template
        # The llama.cpp pre-tokenizer this one equals, or None (then no GGUF can tokenize like it).
        self.pre_tokenizer_name = pre_tokenizer_name
        self.tone_style = tone_style
        self.source = source
        self.specials = specials
        # Set for a vocabulary adopted from a teacher's (vnmini.text.adopt): student id -> teacher id.
        self.teacher_map = None
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        if specials == VNMINI_SPECIALS:
            missing = [t for t in (BOS_TOKEN, EOS_TOKEN) if t not in vocab]
            if missing:
                raise VnminiError(
                    f"{source}: tokenizer lacks special tokens {missing}; train it with `vnmini tokenizer train`."
                )
        if specials.eos is None:
            raise VnminiError(f"{source}: the tokenizer names no eos_token; set eos_token in tokenizer_config.json.")
        for role in ("bos", "eos", "pad", "unk"):
            name = getattr(specials, role)
            if name is not None and name not in vocab:
                raise VnminiError(f"{source}: {role}_token {name!r} is not in the vocabulary; fix {role}_token "
                                  "in tokenizer_config.json / special_tokens_map.json.")
        n = len(vocab)
        bad = [i for i in specials.extra_stop_ids if not 0 <= i < n]
        if bad:
            raise VnminiError(f"{source}: eos_token_id {bad[0]} (generation_config.json) is past the vocabulary "
                              f"of {n}; fix generation_config.json.")
        self.bos_id = vocab[specials.bos] if specials.bos else None
        self.eos_id = vocab[specials.eos]
        self.pad_id = vocab[specials.pad] if specials.pad else self.eos_id
        self.eot_ids = [vocab[t] for t in specials.eot if t in vocab]
        self.add_bos = specials.add_bos and self.bos_id is not None
        # What separates documents in a token stream (shards, eval): BOS, or EOS for BOS-less tokenizers.
        self.doc_sep_id = self.bos_id if self.bos_id is not None else self.eos_id

    @property
    def eot_id(self) -> int | None:
        """The end-of-turn token (ChatML's ``<|im_end|>``, Llama-3's ``<|eot_id|>``...), if any."""
        return self.eot_ids[0] if self.eot_ids else None

    # ----------------------------------------------------------------- basics
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a generation: EOS, the end of a chat turn, generation_config's eos ids."""
        return list(dict.fromkeys([self.eos_id, *self.eot_ids, *self.specials.extra_stop_ids]))

    @cached_property
    def special_ids(self) -> set[int]:
        """Control tokens: every added token marked special, and the named roles."""
        ids = {i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        return ids | {i for i in (self.bos_id, self.eos_id, self.pad_id, *self.eot_ids) if i is not None}

    def normalize(self, text: str) -> str:
        return normalize(text, tone_style=self.tone_style)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Normalize then tokenize. Special-token strings in ``text`` become their ids."""
        ids = self.hf.encode(self.normalize(text), add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
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
                                    add_generation_prompt=add_generation_prompt,
                                    bos_token=self.specials.bos or "", eos_token=self.specials.eos or "")

    def _template_fix(self) -> str:
        if self.source.endswith(".gguf"):
            return ("fix chat_template in the source checkpoint's tokenizer_config.json / chat_template.jinja "
                    "and re-export the GGUF")
        return "fix chat_template in tokenizer_config.json / chat_template.jinja"

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.hf.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False).ids

    # ---------------------------------------------------------- bookkeeping
    @cached_property
    def style(self) -> str:
        """'byte-level' (GPT-2/Qwen2/Llama-3 BPE) or 'sentencepiece' (▁ for spaces, <0xNN> byte fallback)."""
        spec = json.loads(self.hf.to_str())
        if spec.get("model", {}).get("byte_fallback") or "Metaspace" in json.dumps(spec.get("pre_tokenizer")) \
                or "\u2581" in json.dumps(spec.get("decoder"), ensure_ascii=True):
            return "sentencepiece"
        return "byte-level"

    def _raw(self, tok: str) -> bytes:
        """The bytes a (non-special) token stands for in text."""
        if self.style == "sentencepiece":
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                return bytes([int(tok[3:5], 16)])
            return tok.replace("\u2581", " ").encode("utf-8")
        if all(ch in UNICODE_TO_BYTE for ch in tok):
            return bytes(UNICODE_TO_BYTE[ch] for ch in tok)
        return tok.encode("utf-8")  # an added non-byte-level token

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte count of each token id (0 for special tokens), for bits per byte."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        specials = self.special_ids
        for tok, idx in self.hf.get_vocab(with_added_tokens=True).items():
            if idx not in specials and idx < len(out):
                out[idx] = len(self._raw(tok))
        return out

    def token_byte_strings(self) -> list[bytes]:
        """Raw bytes of every token (specials as their UTF-8 text), id order."""
        out = [b""] * self.vocab_size
        specials = self.special_ids
        for tok, idx in self.hf.get_vocab(with_added_tokens=True).items():
            out[idx] = tok.encode("utf-8") if idx in specials else self._raw(tok)
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
        sp = self.specials
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": sp.bos,
            "eos_token": sp.eos,
            "pad_token": sp.pad,
            "unk_token": sp.unk,
            "add_bos_token": self.add_bos,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
            "chat_template": self.chat_template,
            "vnmini_pre_tokenizer": self.pre_tokenizer_name,
            "vnmini_tone_style": self.tone_style,
            "vnmini_eot_tokens": list(sp.eot),
        }
        write_json(folder / "tokenizer_config.json", config)
        extra = [IM_START, IM_END] if sp == VNMINI_SPECIALS else list(sp.eot)
        write_json(
            folder / "special_tokens_map.json",
            {k: v for k, v in (("bos_token", sp.bos), ("eos_token", sp.eos), ("pad_token", sp.pad),
                               ("unk_token", sp.unk)) if v} | {"additional_special_tokens": extra},
        )
        if self.teacher_map is not None:
            from vnmini.text.adopt import MAP_FILE

            write_json(folder / MAP_FILE, self.teacher_map.to_json())

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
            raise VnminiError(f"{tok_file}: not a valid tokenizers JSON ({str(e)[:80]}); restore it from the "
                              "model's source or re-create it with `vnmini tokenizer train`.") from e
        config = read_config(folder)
        vnmini_made = "vnmini_pre_tokenizer" in config
        template = read_chat_template(folder, config)
        specials = read_specials(folder, hf, config)
        if vnmini_made:
            pre = config["vnmini_pre_tokenizer"]
        elif specials == VNMINI_SPECIALS:  # a bare vnmini tokenizer.json: trained with a known pre
            pre = detect_pre_tokenizer(hf) or "gpt-2"
        else:  # someone else's: find its llama.cpp twin by behaviour (None if it has none)
            pre = detect_pre_tokenizer(hf)
        from vnmini.text.adopt import TeacherMap

        tok = cls(
            hf,
            chat_template=template or (CHAT_TEMPLATE if specials == VNMINI_SPECIALS else ""),
            pre_tokenizer_name=pre,
            tone_style=config.get("vnmini_tone_style", "new"),
            source=str(tok_file),
            specials=specials,
        )
        tok.teacher_map = TeacherMap.read(folder)
        return tok
