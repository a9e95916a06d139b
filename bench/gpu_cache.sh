#!/usr/bin/env bash
# Builds .gpu-deno/: a Deno cache with only the npm packages the engine needs (the GPU machine has
# no registry, and the whole node_modules with the server tests' client is too large to carry).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu-deno/' .git/info/exclude 2>/dev/null || echo '/.gpu-deno/' >> .git/info/exclude
rm -rf .gpu-deno
DENO_DIR=$PWD/.gpu-deno deno cache --no-lock --node-modules-dir=none bench/e2e.ts bench/kernels.ts bench/upload.ts \
  bench/synth.ts bench/quality_sweep.ts bench/profile.ts bench/soak.ts bench/server_bench.ts tests/gpu_probe.ts main.ts >/dev/null
for p in openai @types undici-types @stdlib; do rm -rf ".gpu-deno/npm/registry.npmjs.org/$p"; done
du -sh .gpu-deno
