#!/usr/bin/env bash
# All GPU-machine measurements in one go (see ../shared/device/README.md): kernel bandwidth,
# upload paths, end-to-end decode/prefill per policy and budget on a synthesized OLMoE-1B-7B-shaped
# checkpoint, and the PyTorch/transformers baseline on the same shapes. Writes JSON under $OUT and
# prints the tables last.
#   prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh
#   run there:    bash bench/gpu_run.sh   (carry .device-kit and .gpu-deno)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh # $OUT, $D: the deno that runs a script
MODEL=${MODEL:-/tmp/olmoe}
CONFIGS=${CONFIGS:-full,swapmoe@4GiB,swapmoe@8GiB,swapmoe@25%,swapmoe@50%,swapmoe@75%,static@50%,lru@4GiB}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$D tests/gpu_probe.ts
$D bench/kernels.ts --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.md"
t=$(date +%s)
[ -f "$MODEL/config.json" ] || $D bench/synth.ts --preset "${PRESET:-olmoe-1b-7b}" --out "$MODEL"
echo "synth: $(( $(date +%s) - t )) s"; df -h /tmp | tail -1
shard=$(ls "$MODEL"/model-*.safetensors | head -2 | tail -1)
[ "${UPLOAD:-1}" != 0 ] && $D bench/upload.ts --file "$shard" --mib 1024 --out "$OUT/upload.json" 2>&1 | tee "$OUT/upload.md"
$D bench/profile.ts --model "$MODEL" --pos 64 --steps 64 2>&1 | tee "$OUT/profile.md"
timeout ${E2E_TIMEOUT:-330} $D bench/e2e.ts --model "$MODEL" --configs "$CONFIGS" --new 128 --prefill 512 \
  --context 1024 --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.md"
if [ -n "${HF:-1}" ] && [ "${HF:-1}" != 0 ]; then
  PYTHONUNBUFFERED=1 timeout ${HF_TIMEOUT:-200} python3 bench/hf_baseline.py olmoe 2>&1 | grep '^{' | tail -1 > "$OUT/hf.json"
  cat "$OUT/hf.json"
fi
echo; cat "$OUT/kernels.md" "$OUT/upload.md" "$OUT/profile.md" 2>/dev/null; grep '^|' "$OUT/e2e.md"
