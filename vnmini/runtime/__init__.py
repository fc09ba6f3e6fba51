"""vnmini.runtime -- a trained model answering: load, generate, chat.

- :mod:`.loader`: ``load(path)`` for a checkpoint folder, a ``.gguf`` or an ONNX folder.
- :mod:`.generator`: the :class:`~vnmini.runtime.generator.Generator` base (generate,
  chat, logits) and the torch backend.
- :mod:`.sampling`: temperature/top-k/top-p/repetition penalty/stop strings; the one
  source of the sampling defaults.
- :mod:`.gguf_backend` / :mod:`.onnx_backend`: llama.cpp and ONNX Runtime backends.
- :mod:`.chat`: :class:`~vnmini.runtime.chat.ChatSession`, a multi-turn conversation.
- :mod:`.server` / :mod:`.server_api`: ``vnmini serve``, the OpenAI-compatible HTTP API and
  the web chat page (``webchat/index.html``); FastAPI + uvicorn, the ``serve`` extra.

    from vnmini.runtime.loader import load
    gen = load("chat-q4_0.gguf")
    print(gen.chat([{"role": "user", "content": "Hợp đồng là gì?"}]))
"""
