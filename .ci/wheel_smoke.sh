#!/usr/bin/env bash
# Build the wheel, install it in a fresh venv outside the repository and use it as a user would:
# export with verify (GGUF and ONNX), generate, eval --mc sample, info, and a typo (exit 2).
# The venv sees the system site-packages so torch & co are not downloaded again; the test
# fails if `import vnmini` resolves anywhere but the venv, so the wheel's own files are tested.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip wheel --no-deps --no-build-isolation -q -w "$work/dist" "$repo"
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install -q --no-deps --force-reinstall "$work"/dist/vnmini-*.whl
cd "$work"
export PATH="$work/venv/bin:$PATH"
py="$work/venv/bin/python"
"$py" - "$work" <<'PY'
import sys
from pathlib import Path

import torch

import vnmini
from vnmini.assets import SAMPLE_TEXT, asset_path
from vnmini.checkpoint import save_checkpoint
from vnmini.models import LlamaForCausalLM, ModelConfig
from vnmini.text.tokenizer_train import train_tokenizer

work = Path(sys.argv[1])
assert Path(vnmini.__file__).resolve().is_relative_to(work / "venv"), f"vnmini imported from {vnmini.__file__}"
tok = train_tokenizer([str(asset_path(SAMPLE_TEXT))], vocab_size=512)
cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
torch.manual_seed(0)
save_checkpoint(LlamaForCausalLM(cfg), work / "ckpt", tokenizer=tok)
print("smoke: checkpoint written with the installed wheel")
PY
t() { timeout 600 "$@"; }
t vnmini export gguf ckpt -o m.gguf --quant q8_0 | tee export.log
grep -q "verify: PASSED" export.log
t vnmini export onnx ckpt -o m-onnx --quant int8 | tee onnx.log
grep -q "verify: " onnx.log
t vnmini generate m.gguf "Điều 1." -n 8 -t 0
t vnmini eval ckpt m.gguf --mc sample
t vnmini info m.gguf > /dev/null
set +e
t vnmini trian > typo.out 2>&1
code=$?
set -e
[ "$code" -eq 2 ] && grep -q "No such command 'trian'" typo.out && ! grep -q Traceback typo.out
echo "smoke: the installed wheel exports (verified), generates, evaluates and refuses a typo with exit 2"
