#!/usr/bin/env bash
# Quality of the expert precisions on the GPU machine, in one call (docs/quality.md): the bundled
# model on the held-out addresses, 200 windows of 256, at half (8 of 16) and a quarter (4 of 16) of
# the experts' bf16 bytes, every policy at every precision, calibrated on the addresses before 2012
# and on those from 1990; three sweeps in parallel (each is bound by its per-window readback, not by
# the GPU). The expert kernels are timed first, while the GPU is otherwise idle.
#   prepare here: deno run -A --lock=deno.extra.lock bench/quality_sweep.ts prepare --out scratch/quality-ids.json
#                 bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/quality_run.sh   (carry .device-kit, .gpu-deno and scratch/quality-ids.json)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
export SWAPMOE_CACHE=${SWAPMOE_CACHE:-/tmp/swapmoe-cache}; rm -rf "$SWAPMOE_CACHE"
IDS=${IDS:-scratch/quality-ids.json}
WINDOWS=${WINDOWS:-200}
[ "${KERNELS:-1}" != 0 ] && $D bench/kernels.ts --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.md"
Q="$D bench/quality_sweep.ts run --ids $IDS --corpus sotu-test --max-windows $WINDOWS --out $OUT"
PRECISIONS=${PRECISIONS:-bf16,int8,int4,bf16+int4,int8+int4}
$Q --per-layer 8 --experts "$PRECISIONS" --policies swapmoe,swapmoe-profile,static,static-oracle \
  --tag half_train > "$OUT/half_train.log" 2>&1 &
$Q --per-layer 4 --experts "$PRECISIONS" --policies swapmoe,swapmoe-profile,static,static-oracle \
  --tag quarter_train > "$OUT/quarter_train.log" 2>&1 &
$Q --per-layer 4,8 --experts bf16,bf16+int4,int8+int4 --policies swapmoe-profile,static \
  --calibration calibration-recent --tag recent > "$OUT/recent.log" 2>&1 &
wait
for t in half_train quarter_train recent; do echo "== $t"; grep -v '^\s*$' "$OUT/$t.log" | tail -40; done
