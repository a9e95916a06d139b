#!/usr/bin/env bash
# Where prefill and decode time goes on the GPU machine, in one call (issue 18): the synthesized
# OLMoE-1B-7B; bench/profile.ts --prefill (GPU time per kernel family of one prompt's call, 512 and 64
# rows), then bench/e2e.ts under full and swapmoe@8GiB (decode with the GPU's time per step and its idle
# time per token, prefill of a 512-token prompt with the default chunks and with 512-row ones).
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/prefill_run.sh   (carry .device-kit and .gpu-deno)
#   knobs:        PREFILL_ROWS="512 64" (the calls profiled), E2E=0 (profiles only), BATCH_TOKENS="64 512"
#                 (the e2e runs' maxBatchTokens), CONFIGS, NEW, MODEL / PRESET (default /tmp/olmoe, olmoe-1b-7b)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/olmoe}
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset "${PRESET:-olmoe-1b-7b}" --out "$MODEL" > /dev/null
for rows in ${PREFILL_ROWS:-512 64}; do
  echo "## profile, prefill of $rows rows"
  timeout 200 $D bench/profile.ts --model "$MODEL" --prefill "$rows" --steps 8 2>&1 | grep -v XDG |
    tee "$OUT/profile_prefill_$rows.md"
done
if [ "${E2E:-1}" != 0 ]; then
  for bt in ${BATCH_TOKENS:-64 512}; do
    echo "## e2e, --batch-tokens $bt"
    timeout 240 $D bench/e2e.ts --model "$MODEL" --configs "${CONFIGS:-full,swapmoe@8GiB,full,swapmoe@8GiB}" \
      --new "${NEW:-256}" --prefill 512 --context 1024 --batch-tokens "$bt" --out "$OUT/e2e_bt$bt.json" 2>&1 |
      grep '^|' | tee "$OUT/e2e_bt$bt.md"
  done
fi
