#!/usr/bin/env bash
# Switch Transformers speed on the GPU machine: a switch-base-8-shaped checkpoint (d_model 768,
# 12 + 12 blocks, 8 experts every other block, seeded random bf16) decoded under full and swapmoe.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source .device-kit/setup.sh
export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p $XDG_RUNTIME_DIR; chmod 700 $XDG_RUNTIME_DIR
export DENO_DIR=$PWD/.gpu-deno
D="deno run -A --no-lock --node-modules-dir=none --cached-only"
$D bench/synth.ts --preset switch-base-8 --out /tmp/switch-base-8
$D bench/e2e.ts --model /tmp/switch-base-8 --configs "${CONFIGS:-full,swapmoe@80%,swapmoe@90%,static@80%}" \
  --new 128 --prefill 256 --context 512 --out "$OUT/switch_e2e.json" 2>&1 | tee "$OUT/switch_e2e.md"
