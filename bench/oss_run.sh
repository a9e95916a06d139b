#!/usr/bin/env bash
# gpt-oss on the GPU machine, in one call: the parity variants (tests/support/make_gpt_oss_variants.py,
# transformers 5.17, written under $OUT/fixtures), a gpt-oss-20b-shaped checkpoint (bench/synth.ts,
# MXFP4 experts as published) decoded under full and swapmoe at 8 and 6 GiB, transformers on the same
# shapes (bench/hf_baseline.py gpt-oss), and OLMoE full at bf16 and int4 as a check of the engine's
# other changes.
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/oss_run.sh   (carry .device-kit and .gpu-deno)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
export SWAPMOE_CACHE=${SWAPMOE_CACHE:-/tmp/swapmoe-cache}
if [ "${VARIANTS:-1}" != 0 ]; then
  mkdir -p "$OUT/fixtures"
  timeout 200 python3 tests/support/make_gpt_oss_variants.py "$OUT/fixtures" 2>&1 | tail -15
  # one archive: the device tool brings back a few files per call
  tar czf "$OUT/gpt_oss_variants.tgz" -C "$OUT/fixtures" . && rm -rf "$OUT/fixtures"
fi
if [ "${OLMOE:-1}" != 0 ]; then
  [ -f /tmp/olmoe/config.json ] || $D bench/synth.ts --preset olmoe-1b-7b --out /tmp/olmoe
  timeout 200 $D bench/e2e.ts --model /tmp/olmoe --configs full,full/int4,full,full/int4 --new 128 --prefill 512 \
    --context 1024 --out "$OUT/olmoe_e2e.json" 2>&1 | grep -v '^{' | tee "$OUT/olmoe_e2e.md"
fi
[ -f /tmp/gptoss/config.json ] || $D bench/synth.ts --preset gpt-oss-20b --out /tmp/gptoss
timeout 240 $D bench/e2e.ts --model /tmp/gptoss --configs full,swapmoe@8GiB,swapmoe@6GiB,full,swapmoe@8GiB,swapmoe@6GiB \
  --new 128 --prefill 512 --context 1024 --out "$OUT/oss_e2e.json" 2>&1 | grep -v '^{' | tee "$OUT/oss_e2e.md"
[ "${HF:-1}" != 0 ] && PYTHONUNBUFFERED=1 timeout ${HF_TIMEOUT:-180} python3 bench/hf_baseline.py gpt-oss /tmp/gptoss 2>&1 \
  | grep '^{' | tail -1 | tee "$OUT/hf_oss.json"
