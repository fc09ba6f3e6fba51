"""The Llama-family decoder, in plain PyTorch, with Hugging Face parameter names.

RMSNorm, rotary embeddings (HF ``rotate_half`` convention), grouped-query
attention through ``scaled_dot_product_attention``, SwiGLU MLP, optional tied
embeddings and q/k/v(/o) biases (so Qwen2 teachers load). The ``state_dict``
keys are exactly ``transformers.LlamaForCausalLM``'s, so a checkpoint is a
plain safetensors dump of it.

    model = LlamaForCausalLM(cfg)
    logits = model(ids)                                # full forward, causal
    cache = model.new_cache(batch=1, max_len=256)
    logits = model(ids[:, :5], cache=cache)            # prefill
    logits = model(ids[:, 5:6], cache=cache)           # one cached step
    logits = model(ids, position_ids=pos, mask=m)      # packed rows: own positions, block mask

This ``forward`` is the only decoder loop in vnmini: packed SFT passes its
block-diagonal ``mask`` and per-conversation ``position_ids``; the ONNX export
wrapper passes a shape-generic mask and a cache over explicit past tensors.

A cache object only needs ``update(layer_idx, k, v) -> (k_all, v_all)`` and a
``past_length`` attribute, so exporters can pass their own (e.g. one that
concatenates explicit past tensors for ONNX).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vnmini.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels = "torch"  # or "numba"/"auto": vnmini.kernels.rms_norm (see set_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernels != "torch":
            from vnmini.kernels import rms_norm

            return rms_norm(x, self.weight, self.eps, backend=self.kernels)
        # Like HF: normalize in float32, cast back, then scale.
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B or 1, T, D] (broadcast over heads)."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: [B, T] -> cos, sin: [B, T, head_dim]."""
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class KVCache:
    """Preallocated per-layer K/V buffers for incremental decoding (batch B, up to max_len)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.past_length = 0
        self._pending = 0

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, t = self.past_length, k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"KV cache full: {start} + {t} > {self.max_len} positions")
        self.k[layer_idx][:, :, start : start + t] = k
        self.v[layer_idx][:, :, start : start + t] = v
        self._pending = t
        return self.k[layer_idx][:, :, : start + t], self.v[layer_idx][:, :, : start + t]

    def advance(self) -> None:
        """Called by the model once every layer has written this step's keys."""
        self.past_length += self._pending
        self._pending = 0

    def crop(self, length: int) -> None:
        """Forget positions >= length (e.g. to reuse a shared prompt prefix)."""
        self.past_length = min(self.past_length, length)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=bool(cfg.attention_out_bias))
        self.kernels = "torch"

    def forward(self, x, cos, sin, mask, cache) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if self.kernels != "torch":
            from vnmini.kernels import apply_rope as rope_kernel

            q = rope_kernel(q, cos, sin, backend=self.kernels)
            k = rope_kernel(k, cos, sin, backend=self.kernels)
        else:
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.n_kv != self.n_heads:
            # Explicit repeat (not SDPA's enable_gqa) so the ONNX exporter sees plain ops.
            rep = self.n_heads // self.n_kv
            k = (k[:, :, None].expand(b, self.n_kv, rep, k.shape[2], self.head_dim)
                 .reshape(b, self.n_heads, -1, self.head_dim))
            v = (v[:, :, None].expand(b, self.n_kv, rep, v.shape[2], self.head_dim)
                 .reshape(b, self.n_heads, -1, self.head_dim))
        if isinstance(mask, str):  # "causal": plain prefill, let SDPA pick its fused path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = 0.0  # training-time only (LlamaForCausalLM.set_dropout); the exported graph never has it

    def forward(self, x, cos, sin, mask, cache=None) -> torch.Tensor:
        if not (self.training and self.dropout):  # the path every export traces: no dropout op at all
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache), self.dropout)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), self.dropout)


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)


def build_mask(
    q_len: int,
    past_length: int,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
    device: torch.device,
) -> torch.Tensor | str | None:
    """Boolean [B|1, 1, q_len, past+q_len] mask (True = attend), or a shortcut.

    Returns "causal" for a plain prefill and None for a single unpadded step,
    so the common paths keep SDPA's fast kernels.
    """
    total = past_length + q_len
    windowed = sliding_window is not None and total > sliding_window
    if attention_mask is None and not windowed:
        if past_length == 0 and q_len > 1:
            return "causal"
        if q_len == 1:
            return None
    q_pos = torch.arange(past_length, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if windowed:
        allowed = allowed & (k_pos > q_pos - sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :total].bool()
        # A fully padded query row would softmax over nothing (NaN); let it see itself.
        allowed = allowed | (k_pos == q_pos)[None, None]
    return allowed


class LlamaForCausalLM(nn.Module):
    """Decoder + LM head. ``forward(ids) -> logits [B, T, V]`` (float of the weights' dtype)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self.dropout = 0.0
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        """GPT-2 style init: N(0, 0.02), residual outputs scaled by 1/sqrt(2L)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                with torch.no_grad():
                    p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
                continue
            s = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * s)

    def set_kernels(self, backend: str) -> LlamaForCausalLM:
        """Route RMSNorm and RoPE through ``vnmini.kernels`` ("numba"/"auto") or plain torch ("torch").

        Plain torch is the default so that exporters trace ordinary ops; the
        trainer switches to the kernels for speed (``--kernels``).
        """
        for m in self.modules():
            if isinstance(m, RMSNorm | Attention):
                m.kernels = backend
        return self

    def set_dropout(self, p: float) -> LlamaForCausalLM:
        """Dropout on the embeddings and on each residual branch's output, in training mode only.

        A training knob (``--dropout``), not part of the architecture: eval mode, the
        saved ``config.json`` and every export are unchanged. It regularizes runs that
        repeat a small corpus for many epochs (GPT-2's embedding + residual dropout).
        """
        self.dropout = float(p)
        for layer in self.model.layers:
            layer.dropout = self.dropout
        return self

    def new_cache(self, batch: int = 1, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.config, batch, max_len or self.config.max_position_embeddings, p.device, dtype or p.dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, H] (the LM head not applied).

        ``attention_mask`` [B, past+T] marks padding (1 = token); ``mask`` is an
        explicit boolean [B|1, 1, T, past+T] attention mask (True = attend) that
        replaces the causal/padding one, for packed rows and graph export.
        """
        b, t = input_ids.shape
        past = cache.past_length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(b, t)
        x = self.model.embed_tokens(input_ids)
        if self.training and self.dropout:
            x = F.dropout(x, self.dropout)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        if mask is None:
            mask = build_mask(t, past, attention_mask, self.config.extra.get("sliding_window"), input_ids.device)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None and hasattr(cache, "advance"):
            cache.advance()
        return self.model.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, cache, attention_mask, position_ids, mask))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
