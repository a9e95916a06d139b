#!/usr/bin/env bash
# Batched decoding through the server on the GPU machine, in one call (issue 14): an OLMoE-1B-7B-shaped
# checkpoint (seeded random bf16, bench/synth.ts; made when absent) served by the OpenAI-compatible
# server with 16 sequences decoded together (`--parallel 16`), 1, 4, 8 and 16 concurrent streaming
# clients, under `full` and under `swapmoe` at 8 GiB: aggregate decode tok/s, time to first token and
# inter-token latency p50 / p99 per level (bench/server_bench.ts); first the kernels (bench/kernels.ts),
# the expert GEMVs at 8 and 16 tokens among them.
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/batch_run.sh   (carry .device-kit and .gpu-deno; about 5 minutes;
#                 KERNELS=0 skips the kernels, CONFIGS="full" one configuration)
set -uo pipefail
cd "$(dirname "$0")/.."
# on the GPU machine; elsewhere (a check on lavapipe: KERNELS=0 MODEL=models/sotu-moe-mini LEVELS=1,2 TOKENS=8
# ROUNDS=1 PARALLEL=2 CONFIGS="full swapmoe@70%" bash bench/batch_run.sh, without .device-kit) the installed deno
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/olmoe}
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset "${PRESET:-olmoe-1b-7b}" --out "$MODEL"
# prompt 32 and 128 new tokens per request, two requests per stream one after the other; KV caches
# for 16 sequences of 512 positions (2.0 GiB at the OLMoE shape, in the budget)
ARGS="--model $MODEL --parallel ${PARALLEL:-16} --levels ${LEVELS:-1,4,8,16} --prompt 32 --tokens ${TOKENS:-128} --rounds ${ROUNDS:-2} --context 512"
# the kernels of a batched step: the expert GEMVs at 8 and 16 tokens (and lm_head at 16 rows), whose
# workgroups read each expert's rows for all tokens side by side, against one token and the prefill shapes
[ "${KERNELS:-1}" != 0 ] && timeout 240 $D bench/kernels.ts --out "$OUT/batch_kernels.json" 2>&1 | tee "$OUT/batch_kernels.md"
for CONFIG in ${CONFIGS:-full swapmoe@8GiB}; do
  POLICY=${CONFIG%@*}
  BUDGET=$([ "$CONFIG" != "$POLICY" ] && echo "--budget ${CONFIG#*@}")
  echo "== $CONFIG"
  timeout ${LEVEL_TIMEOUT:-150} $D bench/server_bench.ts $ARGS --policy "$POLICY" $BUDGET --direct \
    --out "$OUT/batch_${CONFIG//@/_}.json" 2>&1 | tee "$OUT/batch_${CONFIG//@/_}.md"
done
