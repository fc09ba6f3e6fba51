"""Named model shapes, from a CPU toy to an H100 teacher.

Deep-and-thin (MobileLLM/SmolLM: depth beats width at small size), GQA,
SwiGLU, tied embeddings, head_dim 64. The bigger presets have widths that are
multiples of 256 so llama.cpp's K-quants (256-element super-blocks) apply to
every matrix; the toys trade that for speed on 2 cores.

    from vnmini.models import preset, PRESETS
    cfg = preset("tiny", vocab_size=16384)
    for name in PRESETS: print(name, describe(name))
"""

from __future__ import annotations

from typing import Any

from vnmini.errors import VnminiError
from vnmini.models.config import ModelConfig

# Parameter counts in the comments are for vocab 16,384 (tied embeddings).
PRESETS: dict[str, dict[str, Any]] = {
    # ~2.9M: the test-suite / --tiny quickstart model.
    "micro": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512),
    # ~5.5M: a CPU toy that still learns Vietnamese syllables in minutes.
    "tiny": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=6,
                 num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=512),
    # ~10.2M: a student for more compute than 2 CPU cores (6.0M outside the embeddings against tiny's 2.4M; widths
    # multiples of 256 so K-quants apply). In the Gemma benchmark on 2 cores it lost to tiny at equal time (README).
    "lite": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512),
    # ~25M: a CPU teacher / laptop student.
    "mini": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=12,
                 num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024),
    # ~126M: consumer-GPU student, K-quant friendly.
    "small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=18,
                  num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048),
    # ~355M.
    "medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=30,
                   num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048),
    # ~1.03B: the H100 teacher (TinyLlama-like shape).
    "large": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset as a ``ModelConfig``; keyword overrides win (e.g. ``vocab_size``)."""
    if name not in PRESETS:
        raise VnminiError(f"--preset {name!r} is unknown; choose one of {', '.join(PRESETS)}.")
    fields = {"vocab_size": 16384, "tie_word_embeddings": True, **PRESETS[name], **overrides}
    return ModelConfig(**fields)


def describe(name: str, vocab_size: int = 16384, seq_len: int = 512) -> dict[str, Any]:
    cfg = preset(name, vocab_size=vocab_size)
    return {
        "preset": name,
        "params": cfg.num_parameters(),
        "non_embedding_params": cfg.num_parameters(include_embeddings=False),
        "flops_per_token": cfg.flops_per_token(seq_len),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "heads": f"{cfg.num_attention_heads}/{cfg.num_key_value_heads}",
    }
