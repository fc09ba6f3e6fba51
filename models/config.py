"""``ModelConfig``: the model's shape, field-for-field Hugging Face ``LlamaConfig``.

One dataclass is the single source of truth for a decoder's hyper-parameters.
Its JSON is a valid ``config.json`` for ``transformers.LlamaForCausalLM`` and
it reads both generations of HF configs (transformers 4: ``rope_theta`` at the
top; transformers 5: ``rope_parameters: {rope_theta, rope_type}``), plus the
Mistral and Qwen2 variants we load as teachers.

    cfg = ModelConfig(vocab_size=16384, hidden_size=256, num_hidden_layers=8, ...)
    cfg.num_parameters(), cfg.flops_per_token(seq_len=512)
    ModelConfig.from_hf_dict(json.load(open("config.json")))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vnmini.errors import VnminiError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass
class ModelConfig:
    vocab_size: int = 16384
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    # Qwen2 has bias on q/k/v but not on o_proj; Llama's attention_bias covers all four.
    attention_out_bias: bool | None = None
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = 2
    torch_dtype: str = "float32"
    model_type: str = "llama"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise VnminiError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim or change the heads."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise VnminiError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}."
            )
        if self.head_dim % 2:
            raise VnminiError(f"head_dim {self.head_dim} must be even for rotary embeddings.")
        if self.attention_out_bias is None:
            self.attention_out_bias = self.attention_bias

    # ------------------------------------------------------------- derived
    @property
    def n_rep(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def stop_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        if eos is None:
            return []
        return list(eos) if isinstance(eos, list) else [eos]

    def num_parameters(self, include_embeddings: bool = True) -> int:
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q = self.num_attention_heads * hd
        kv = self.num_key_value_heads * hd
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.attention_out_bias:
            attn += h
        layer = attn + 3 * h * i + 2 * h
        n = self.num_hidden_layers * layer + h  # final norm
        if include_embeddings:
            n += self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        elif not self.tie_word_embeddings:
            n += self.vocab_size * h  # the lm_head still costs matmuls
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward+backward, 6N + attention, PaLM appendix B)."""
        seq_len = seq_len or self.max_position_embeddings
        n_matmul = self.num_parameters(include_embeddings=False)
        # The lm_head matmul counts even when tied; the embedding lookup doesn't.
        if self.tie_word_embeddings:
            n_matmul += self.vocab_size * self.hidden_size
        attn = 12 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq_len
        return 6.0 * n_matmul + attn

    # --------------------------------------------------------------- JSON
    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` for ``LlamaForCausalLM`` (written in both generations' keys)."""
        d = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            # A Qwen2-style model (bias on q/k/v only) is saved with a zero o_proj bias.
            "attention_bias": bool(self.attention_bias or self.attention_out_bias),
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "hidden_act": "silu",
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "dtype": self.torch_dtype,
        }
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = d.get("architectures") or []
        arch = archs[0] if archs else None
        model_type = d.get("model_type", "llama")
        if arch not in SUPPORTED_ARCHITECTURES and model_type not in SUPPORTED_ARCHITECTURES.values():
            raise VnminiError(
                f"{source}: architecture {arch or model_type!r} is not supported; vnmini loads "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} folders."
            )
        if arch in SUPPORTED_ARCHITECTURES:
            model_type = SUPPORTED_ARCHITECTURES[arch]
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise VnminiError(f"{source}: rope type {rope_type!r} is not supported "
                              "(only the default rotary embedding).")
        rope_theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        sliding = d.get("sliding_window") if model_type != "qwen2" or d.get("use_sliding_window") else None
        try:
            attention_bias = bool(d.get("attention_bias", model_type == "qwen2"))
            cfg = cls(
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(d["num_attention_heads"]),
                num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
                head_dim=d.get("head_dim"),
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                rope_theta=float(rope_theta),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=attention_bias,
                attention_out_bias=False if model_type == "qwen2" else attention_bias,
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"),
                torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
                model_type=model_type,
            )
        except KeyError as e:
            raise VnminiError(f"{source}: missing key {e.args[0]!r}; is this a Llama/Mistral/Qwen2 config.json?") from e
        if sliding and int(sliding) < cfg.max_position_embeddings:
            cfg.extra["sliding_window"] = int(sliding)
        return cfg

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
