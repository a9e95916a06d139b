#!/usr/bin/env bash
# swapmoe's upload pacing on the GPU machine, in one call (issue 18): a Mixtral-shaped checkpoint at a
# quarter of its width (bench/synth.ts --preset mixtral-quarter: 8 experts of 84 MiB a layer) and the
# OLMoE-1B-7B shape, each decoded under full and swapmoe (and static) alternating in one process, three
# rounds, with uploads paced by the steps' slack (the default); then swapmoe once more in a process with
# the earlier fixed cap of two experts a step (--max-upload-mib), for the before figure.
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/pacer_run.sh   (carry .device-kit and .gpu-deno)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
NEW=${NEW:-256}
[ -f /tmp/mixtral/config.json ] || $D bench/synth.ts --preset mixtral-quarter --out /tmp/mixtral > /dev/null &
[ -f /tmp/olmoe/config.json ] || $D bench/synth.ts --preset olmoe-1b-7b --out /tmp/olmoe > /dev/null &
wait
e2e() { # name model configs [extra flags]
  local name=$1 model=$2 configs=$3; shift 3
  echo "## $name: $configs $*"
  timeout ${E2E_TIMEOUT:-240} $D bench/e2e.ts --model "$model" --configs "$configs" --new "$NEW" --prefill 512 \
    --context 1024 --out "$OUT/$name.json" "$@" 2>&1 | grep -v '^{' | tee "$OUT/$name.md"
}
MIX=${MIX_CONFIGS:-full,swapmoe@50%,static@50%,full,swapmoe@50%,static@50%,full,swapmoe@50%,static@50%}
OLM=${OLMOE_CONFIGS:-full,swapmoe@4GiB,swapmoe@8GiB,full,swapmoe@4GiB,swapmoe@8GiB,full,swapmoe@4GiB,swapmoe@8GiB}
e2e mixtral_paced /tmp/mixtral "$MIX"
[ "${FIXED:-1}" != 0 ] && e2e mixtral_fixed /tmp/mixtral full,swapmoe@50%,full,swapmoe@50% --max-upload-mib 168
e2e olmoe_paced /tmp/olmoe "$OLM"
[ "${FIXED:-1}" != 0 ] && e2e olmoe_fixed /tmp/olmoe full,swapmoe@4GiB,swapmoe@8GiB --max-upload-mib 24
