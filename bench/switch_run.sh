#!/usr/bin/env bash
# Switch Transformers speed on the GPU machine: a switch-base-8-shaped checkpoint (d_model 768,
# 12 + 12 blocks, 8 experts every other block, seeded random bf16) decoded under each policy, and
# transformers decoding the same shapes (all-resident, and accelerate offloading at ~50 %).
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/switch_run.sh   (carry .device-kit and .gpu-deno)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/switch-base-8}
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset switch-base-8 --out "$MODEL"
$D main.ts info --model "$MODEL" 2>&1 | tee "$OUT/switch_info.txt"
timeout ${E2E_TIMEOUT:-300} $D bench/e2e.ts --model "$MODEL" \
  --configs "${CONFIGS:-full,swapmoe@50%,static@50%,swapmoe@80%,lru@50%,full}" \
  --new 256 --prefill 256 --context 512 --out "$OUT/switch_e2e.json" 2>&1 | tee "$OUT/switch_e2e.md"
if [ "${HF:-1}" != 0 ]; then
  PYTHONUNBUFFERED=1 timeout ${HF_TIMEOUT:-150} python3 bench/hf_baseline.py switch 2>&1 | tee "$OUT/hf_switch.log" |
    grep '^{' | tail -1 > "$OUT/hf_switch.json"
  cat "$OUT/hf_switch.json"
fi
echo; grep '^|' "$OUT/switch_e2e.md"
