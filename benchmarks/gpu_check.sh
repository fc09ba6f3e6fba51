#!/usr/bin/env bash
# GPU readiness in one command (under 8 minutes on one CUDA GPU):
#
#   bash benchmarks/gpu_check.sh            # from the repository root, in the environment vnmini is installed in
#
# 1. the Numba CUDA kernels on the hardware (tests/test_kernels_cuda.py, NUMBA_ENABLE_CUDASIM unset);
# 2. tests/test_cuda.py: bf16 autocast parity, fused AdamW, torch.compile, the trainer on CUDA under a
#    --max-minutes plan, FSDP2 on 1 GPU via torchrun, onnxruntime-gpu (skipped when not installed);
# 3. a ~2-minute training probe of the small and large presets: tokens/s and MFU as a markdown table,
#    also written to benchmarks/results_gpu.md.
# Without CUDA it says so and exits 3 at once. Exit 1 if any step failed. PYTHON=... picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False for $("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "$PY: no torch")); run this on a CUDA machine." >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
unset NUMBA_ENABLE_CUDASIM
fail=0
t_all=$SECONDS
step() {  # step "what" timeout_s command...
  local what=$1 limit=$2 t=$SECONDS
  shift 2
  echo "== $what"
  if timeout "$limit" "$@"; then
    echo "   ok ($((SECONDS - t)) s)"
  else
    echo "   FAILED (rc $?, $((SECONDS - t)) s)"
    fail=1
  fi
}
step "Numba CUDA kernels on the GPU" 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_cuda.py -k on_gpu
step "bf16 / fused AdamW / torch.compile / trainer / FSDP2 / onnxruntime-gpu" 270 \
  "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py
step "training probe: small and large presets" 210 \
  "$PY" benchmarks/gpu_probe.py --presets small,large --seconds 50 --out benchmarks/results_gpu.md
echo "gpu_check: $([ $fail = 0 ] && echo passed || echo FAILED) in $((SECONDS - t_all)) s"
exit $fail
