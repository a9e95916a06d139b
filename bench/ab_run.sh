#!/usr/bin/env bash
# A/B decode speed on the GPU machine: one synthesized checkpoint decoded by two source trees, the
# runs alternating A, B, A, B … in one call, so that a change is measured against what it replaced on
# the same machine and model (bench/e2e.ts in each tree).
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#                 and the old tree, e.g. mkdir .before && git archive REV mod.ts main.ts deno.json src
#                 shaders bench ffi | tar -x -C .before  (ignored: echo /.before/ >> .git/info/exclude)
#   run there:    A=.before B=. bash bench/ab_run.sh   (carry .device-kit, .gpu-deno and .before)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/olmoe}
CONFIGS=${CONFIGS:-full,swapmoe@4GiB}
A=${A:-.before}; B=${B:-.}
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset "${PRESET:-olmoe-1b-7b}" --out "$MODEL"
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in A B; do
    dir=${!side}
    echo "## round $round, $side ($dir), $(date +%T.%N)" | tee -a "$OUT/ab.md"
    (cd "$dir" && timeout "${E2E_TIMEOUT:-200}" $D bench/e2e.ts --model "$MODEL" --configs "$CONFIGS" \
      --new "${NEW:-128}" --prefill 512 --context 1024 --out "$OUT/ab_${side}_${round}.json") 2>&1 |
      grep '^|' | tee -a "$OUT/ab.md"
  done
done
