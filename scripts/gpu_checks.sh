#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine that has one: the CUDA tests (every test that the CPU suite skips
# for want of a GPU), then `bmojo bench --suite decode` on the GPU (bmojo's static step captured as a CUDA graph
# against HF Mamba2 and Mistral generate()). Usage: bash scripts/gpu_checks.sh OUTDIR
# Uses the python3 on PATH, with bmojo installed (pip install -e .) or importable (PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_checks.sh OUTDIR}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name())"
rc=0
python3 -m pytest -q -rs -k "cuda" tests/ 2>&1 | tee "$OUT/cuda_tests.log" || rc=1
python3 -m bmojo bench --suite decode --device cuda \
  --out "$OUT/bench_decode_cuda" 2>&1 | tee "$OUT/bench_decode_cuda.log" || rc=1
exit $rc
