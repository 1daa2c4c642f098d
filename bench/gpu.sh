#!/usr/bin/env bash
# The GPU measurements of issue 16 in one command, sized for a 10-minute slot on one H100/H200-class GPU:
#
#   bash bench/gpu.sh [OUT_DIR]          # default OUT_DIR: bench/results/gpu-<UTC time>
#
# 1. ships_sweep.py --preset 7b: a Llama-2-7B-shaped random model (32 x 32 heads, hidden 4096, vocabulary
#    32,000, bf16, weights from a config: no download), 100 prompts of 30 tokens. The engine's full sweep
#    (1,024 heads x 100 prompts) is measured; the paper's loop and the fair naive loop are timed on a
#    sample (layer 0 x 10 prompts = 320 batch-1 forwards each) and extrapolated to the full sweep, as the
#    script prints; FLOP/s against a bf16 matmul rate measured in the same run.       (step limit 240 s)
# 2. generate.py --preset 7b: shb's cached generation under ablation vs transformers' generate and the
#    paper's decoding loop, same model shape.                                            (step limit 120 s)
# 3. pytest -m gpu: engine vs naive on CUDA, bf16 vs fp32 Ships, generation equality, OOM recovery.
#    The first run builds the toy model (about a minute of CPU).                         (step limit 180 s)
# Every step writes its output to OUT_DIR/<step>.txt (also on failure or timeout) and the exit codes to
# OUT_DIR/status.txt; a failed step does not stop the next; the script exits non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SHB_CACHE="${SHB_CACHE:-$PWD/.shb-cache}"   # the toy model for the bf16 test is built here once (~1 min CPU)
OUT="${1:-bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
: > "$OUT/status.txt"
failed=0

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  local start rc=0
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.txt" 2>&1 || rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/status.txt"
  tail -n 25 "$OUT/$name.txt"
  if [ "$rc" -ne 0 ]; then failed=1; fi
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step ships_7b 240 python bench/ships_sweep.py --preset 7b --naive-layers 1 --naive-prompts 10 --repeats 3
step generate_7b 120 python bench/generate.py --preset 7b --no-toy --prompts 32 --new-tokens 64 --batch-size 32 \
  --repeats 2 --reference-prompts 4
step pytest_gpu 180 python -m pytest -q -m gpu tests/gpu tests/integration/test_engine.py -rA -s
echo "results in $OUT"
exit "$failed"
