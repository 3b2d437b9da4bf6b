#!/usr/bin/env bash
# GPU check. Two levels (docs/benchmarks.md):
#   launch/gpu_check.sh --learner-only   # torch + transformers + DeepSpeed only; < 5 min on one GPU
#   launch/gpu_check.sh                  # full stack (Ray + vLLM): colocated IPC and split modes
# The model is a random-init Qwen2.5-0.5B-shaped model built offline on first use
# (rlpost make-tiny --preset qwen2-0.5b); nothing is downloaded. Extra flags go to the check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# Module entry point, not the CLI: the learner-only level must run where Ray and vLLM are absent.
exec "$PY" -m rlpost.commands.gpu_check "$@"
