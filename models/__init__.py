"""Model shapes and the Llama-family decoder (``vnmini.models``).

- :class:`ModelConfig` — HF ``LlamaConfig``-compatible hyper-parameters.
- :data:`PRESETS`, :func:`preset` — named shapes from ~3M to ~1B parameters.
- :class:`LlamaForCausalLM` — the decoder with KV cache (HF parameter names).
- :func:`load_hf_model` — a HF Llama/Mistral/Qwen2 safetensors folder into it.
"""

from vnmini.models.config import ModelConfig
from vnmini.models.hf import export_state_dict, load_hf_model, read_config, read_state_dict
from vnmini.models.llama import KVCache, LlamaForCausalLM
from vnmini.models.presets import PRESETS, describe, preset

__all__ = [
    "ModelConfig", "PRESETS", "preset", "describe", "LlamaForCausalLM", "KVCache",
    "load_hf_model", "read_config", "read_state_dict", "export_state_dict",
]
