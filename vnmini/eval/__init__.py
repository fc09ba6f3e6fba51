"""vnmini.eval -- how good and how fast a model is.

- :mod:`.bpb`: bits per byte (and perplexity) on text, sliding windows, any backend.
- :mod:`.mc`: accuracy on VMLU-format multiple choice JSONL.
- :mod:`.bench`: prefill/decode tokens per second, peak RAM, file size per model
  (each measured in a fresh process by :mod:`.bench_child`).

    from vnmini.eval.bpb import eval_text
    from vnmini.runtime.loader import load
    print(eval_text(load("chat-q4_0.gguf"), "corpus/heldout")["bpb"])
"""
