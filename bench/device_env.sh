# The environment of every bench/*_run.sh, sourced from the repository root: $OUT, where results go (on
# the GPU machine the device tool's folder that comes back), and $D, the deno that runs a script. With
# the device kit (prepare here: bash ../shared/device/prepare.sh && bash bench/gpu_cache.sh; carry
# .device-kit and .gpu-deno) its deno and the cache made for it; without, the installed deno (a check
# on lavapipe). Note that the kit, sourced on a machine without the GPU, points Vulkan at NVIDIA's
# driver, so WebGPU there falls back to OpenGL.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -f .device-kit/setup.sh ]; then
  source .device-kit/setup.sh
  export DENO_DIR=$PWD/.gpu-deno
  D="deno run -A --no-lock --node-modules-dir=none --cached-only"
else
  D="deno run -A --no-lock"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg}; mkdir -p "$XDG_RUNTIME_DIR"; chmod 700 "$XDG_RUNTIME_DIR"
