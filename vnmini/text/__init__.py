"""vnmini.text -- text before and after tokens.

- :mod:`.normalization`: Vietnamese normalization (NFC, one tone-mark convention, stray
  control characters), syllable counting; applied at every entry point.
- :mod:`.tokenizer`: :class:`~vnmini.text.tokenizer.VnTokenizer`, the one tokenizer
  interface (encode/decode, special tokens, chat template).
- :mod:`.tokenizer_train`: train vnmini's byte-level BPE with Hugging Face ``tokenizers``.
- :mod:`.specials`: which tokens are BOS/EOS/pad/end-of-turn, read from a tokenizer's own files.
- :mod:`.pretokenizers`: llama.cpp's named pre-tokenizers, and finding a tokenizer's twin by behaviour.
- :mod:`.chat_template`: rendering untrusted chat templates with bounded size and time.
- :mod:`.gguf_vocab`: read the tokenizer stored in a GGUF back into a ``VnTokenizer``.
- :mod:`.llamacpp_tokenizer`: llama.cpp's own tokenizer behind the same interface, for any other GGUF.

    from vnmini.text.normalization import normalize
    from vnmini.text.tokenizer import VnTokenizer
    tok = VnTokenizer.load("runs/tiny/final")
    ids = tok.encode(normalize("Điều 1. Phạm vi điều chỉnh"))

The package itself imports nothing, so ``import vnmini.text.normalization`` stays light.
"""
