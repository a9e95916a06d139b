#!/usr/bin/env bash
# Quantized experts on the GPU machine, in one call: an OLMoE-1B-7B-shaped checkpoint (seeded random
# bf16, bench/synth.ts) decoded with every expert at bf16, int8 and int4, and under swapmoe at 4 GiB
# with bf16 and with bf16+int4; the first int4/int8 load quantizes into a fresh $SWAPMOE_CACHE, the
# next maps it; then the expert kernels per precision (bench/kernels.ts), a profile of a decode step
# (bench/profile.ts), and host memory over a 1,000-token generation and a 200-request soak.
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/quant_run.sh   (carry .device-kit and .gpu-deno)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/olmoe}
export SWAPMOE_CACHE=${SWAPMOE_CACHE:-/tmp/swapmoe-cache}; rm -rf "$SWAPMOE_CACHE"
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset "${PRESET:-olmoe-1b-7b}" --out "$MODEL"
CONFIGS=${CONFIGS:-full,full/int4,full/int4,full/int8,swapmoe@4GiB,swapmoe@4GiB/bf16+int4,full,full/int4,swapmoe@4GiB,swapmoe@4GiB/bf16+int4}
timeout ${E2E_TIMEOUT:-330} $D bench/e2e.ts --model "$MODEL" --configs "$CONFIGS" --new 128 --prefill 512 \
  --context 1024 --out "$OUT/quant_e2e.json" 2>&1 | grep -v '^{' | tee "$OUT/quant_e2e.md"
[ "${KERNELS:-1}" != 0 ] && $D bench/kernels.ts --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.md"
[ "${PROFILE:-1}" != 0 ] && $D bench/profile.ts --model "$MODEL" --pos 64 --steps 64 2>&1 | tee "$OUT/profile.md"
if [ "${RSS:-1}" != 0 ]; then
  /usr/bin/time -f "generate 1000 tokens: peak RSS %M KiB, %e s" $D main.ts generate --max-tokens 1000 \
    --min-tokens 1000 --json "The state of the Union" > /dev/null 2> "$OUT/rss_generate.txt"
  tail -1 "$OUT/rss_generate.txt"
  timeout 200 $D bench/soak.ts --requests 200 2>&1 | tail -4 | tee "$OUT/soak.txt"
fi
