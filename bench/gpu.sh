#!/usr/bin/env bash
# Ships sweep on a Llama-2-7B-shaped random model (bf16, 100 prompts of 40 tokens) on one CUDA GPU.
# Under 8 minutes on an H100/H200-class GPU: the engine is timed on layer 0 (median of 3) and on the
# full 32 x 32-head sweep (once); the naive per-head loop on layer 0 only (3,200 batch-1 forwards),
# and the two are checked to agree there. Usage: bash bench/gpu.sh [extra ships_sweep.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
exec timeout 480 python bench/ships_sweep.py --preset 7b --naive-layers 1 --repeats 3 "$@"
