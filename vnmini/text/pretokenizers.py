"""Byte-level BPE pre-tokenizers that llama.cpp knows by name, and finding a foreign
tokenizer's twin among them.

llama.cpp does not read a tokenizer's regex from the GGUF: it picks its own by the
name in ``tokenizer.ggml.pre``. A GGUF tokenizes like its source only if that name's
regex splits text exactly as the source's pre-tokenizer does, so the twin is found
by behaviour (the splits of probe strings that separate every pair of candidates:
digit runs, contractions, newlines, whitespace runs, Vietnamese, emoji), never by a
model's name.

    build_pre_tokenizer("qwen2")              # the HF pre-tokenizer equal to llama.cpp's qwen2
    detect_pre_tokenizer(hf_tokenizer)        # 'llama-bpe', 'qwen2', 'gpt-2', 'starcoder' or None
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, pre_tokenizers

from vnmini.errors import VnminiError

# llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_GPT2 (what ByteLevel(use_regex=True) runs).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2, verbatim.
QWEN2_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3 ("llama-bpe": Llama-3 and its fine-tunes).
LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# "starcoder" (also SmolLM's, under the name "smollm"): single digits split off first, then GPT-2's regex.
PRE_TOKENIZERS = ("gpt-2", "qwen2", "llama-bpe", "starcoder")

# Strings whose splits differ between every pair above (and from most other regexes).
PROBES = (
    "Điều 1234567 của Bộ luật Dân sự năm 2015, khoản 3.",
    "I'm here, it'S OK; we'VE 12 cats and 3,500 dogs!!",
    "  hai  khoảng\ttrắng   \n\n  dòng mới\r\nxuống dòng",
    "Xin chào 😀👍🏽 — «ngoặc» (tiếng Việt) ...?!",
    "x=1+2*3; a_b-c/d\\e 0.25% 1e-5",
)


def build_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The Hugging Face pre-tokenizer that matches llama.cpp's pre-tokenizer named ``pre``."""
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "starcoder":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    regex = {"qwen2": QWEN2_REGEX, "llama-bpe": LLAMA3_REGEX}.get(pre)
    if regex is None:
        raise VnminiError(f"--pre {pre!r}: llama.cpp knows these pre-tokenizers by name: {', '.join(PRE_TOKENIZERS)}.")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _splits(pre: pre_tokenizers.PreTokenizer, text: str) -> list[str]:
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def detect_pre_tokenizer(hf: Tokenizer) -> str | None:
    """The name of the llama.cpp pre-tokenizer that splits every probe like ``hf`` does, or None."""
    pre = hf.pre_tokenizer
    if pre is None:
        return None
    try:
        got = [_splits(pre, p) for p in PROBES]
    except Exception:  # a pre-tokenizer that fails on ordinary text has no twin
        return None
    for name in PRE_TOKENIZERS:
        if [_splits(build_pre_tokenizer(name), p) for p in PROBES] == got:
            return name
    return None


def describe_pre_tokenizer(hf: Tokenizer) -> str:
    """A short description of ``hf``'s pre-tokenizer for messages ('Metaspace', 'Split(regex) + ByteLevel')."""
    import json

    spec = json.loads(hf.to_str()).get("pre_tokenizer")
    if not spec:
        return "none"
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    return " + ".join(str(p.get("type")) for p in parts)
