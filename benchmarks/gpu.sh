#!/usr/bin/env bash
# The GPU check, one script for a lent GPU machine (< 8 minutes on one H100/H200-class GPU): installs what CI
# installs if needed, then benchmarks/gpu_check.py: paper-size teacher and Serial student (cached targets) of
# every family trained for 200 steps in bf16-mixed and tested, with videos/s, peak memory and the ratios, and
# `vdistill test` on 1 vs all visible GPUs. Output: the tables on stdout, also saved to $OUT/gpu.md if $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import lightning_distill" 2>/dev/null; then
    python -m pip install --quiet -e ".[dev]"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python benchmarks/gpu_check.py "$@" | tee "${OUT:-/tmp}/gpu.md"
