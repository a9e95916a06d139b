/**
 * Diagnostic, not a test: host memory and time per dispatch of matmul.wgsl's `gemv8` and
 * router.wgsl's `main` with `Step` and `Params` declared as uniform buffers (`var<uniform>`, as they
 * were until the fix of issue 17) and as shipped (`var<storage, read>`), each bound once and
 * dispatched 200 times.
 *
 * Why: Mesa's lavapipe 22.x (22.3.6 is Debian 12's `mesa-vulkan-drivers`) looks, in every shader of
 * more than 100 SSA values, for uniform-buffer values that decide a branch or end a loop whose counter
 * starts at a constant (`if (p.accumulate == 1u)`, `for (var k = 0u; k < p.top_k; k++)`). When it finds
 * one, then at every dispatch after a bind group was set it reads those values, inlines them as
 * constants, compiles the shader again with LLVM and binds the new code, without caching it or freeing
 * the code it replaces (`update_inline_shader_state` in lavapipe's lvp_execute.c). The engine sets a
 * bind group per dispatch, so these two kernels cost ~0.7-0.8 MiB and ~15-20 ms of compiling per
 * dispatch, 13 MiB per token of the bundled model (13 gemv8 and 4 router dispatches), for ever. Loads
 * from storage buffers are never inlined, so with read-only storage each pipeline is compiled once;
 * the shaders' arithmetic is the same either way (the engine's logits are bitwise equal).
 *
 * Usage: deno run -A tests/support/lavapipe_uniform_inlining.ts
 * On lavapipe 22.3.6 (LLVM 15, 2 shared cores) it printed:
 *   matmul.wgsl gemv8 (Step, Params uniform)       812 KiB   35.1 ms per dispatch
 *   matmul.wgsl gemv8 (as shipped)                  11 KiB   14.3 ms per dispatch
 *   router.wgsl main (Step, Params uniform)        713 KiB   30.2 ms per dispatch
 *   router.wgsl main (as shipped)                    1 KiB   12.6 ms per dispatch
 * (~13 ms is one submit and `onSubmittedWorkDone` on lavapipe, whatever the kernel; the few KiB of the
 * shipped rows do not recur: a trivial kernel levels off within 1,000 dispatches.)
 */
import { shaderSource } from "../../src/gpu/pipelines.ts";

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("No WebGPU adapter");
const device = await adapter.requestDevice({ requiredLimits: { maxStorageBuffersPerShaderStage: 10 } });
console.log(`adapter: ${adapter.info.description || adapter.info.vendor}`);

const AS_UNIFORM = (code: string) =>
  code.replace("var<storage, read> step: Step;", "var<uniform> step: Step;")
    .replace("var<storage, read> p: Params;", "var<uniform> p: Params;");

interface Case {
  file: string;
  entry: string;
  constants: Record<string, number>;
  /** Bindings the entry point uses besides 0 (Step) and 1 (Params). */
  bindings: number[];
  /** Params words (u32), and the workgroups of one dispatch. */
  params: number[];
  workgroups: number;
}

const CASES: Case[] = [
  // the bundled model's q/k/v projection of one token: in 128, out 256, no bias, overwrite
  {
    file: "matmul.wgsl",
    entry: "gemv8",
    constants: { WG: 256, RW: 8, TT: 4 },
    bindings: [3, 5, 6, 7],
    params: [128, 256, 0, 0, 0, 0, 0, 0],
    workgroups: 256 / 8,
  },
  // one token's routing among 16 experts, top-2, masked
  {
    file: "router.wgsl",
    entry: "main",
    constants: {},
    bindings: [2, 3, 4, 5, 6, 7, 8, 9],
    params: [16, 2, 0, 1, 0, 128, 1, 4],
    workgroups: 1,
  },
];

/** RSS growth (KiB) and wall time (ms) per dispatch over `n` dispatches after 5 warm-up ones. */
async function perDispatch(c: Case, code: string, n = 200): Promise<[number, number]> {
  const module = device.createShaderModule({ code });
  const pipeline = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: c.entry, constants: c.constants },
  });
  const usage = GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const step = device.createBuffer({ size: 32, usage });
  device.queue.writeBuffer(step, 0, new Uint32Array([1, 0, 0, 1, 0, 0, 0, 0])); // t = 1, head_rows = 1
  const params = device.createBuffer({ size: 32, usage });
  device.queue.writeBuffer(params, 0, new Uint32Array(c.params));
  const data = c.bindings.map(() => device.createBuffer({ size: 1 << 20, usage }));
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: step } },
      { binding: 1, resource: { buffer: params } },
      ...c.bindings.map((binding, i) => ({ binding, resource: { buffer: data[i]! } })),
    ],
  });
  const run = async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(c.workgroups);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  for (let i = 0; i < 5; i++) await run();
  const rss = Deno.memoryUsage().rss;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await run();
  const ms = (performance.now() - t0) / n;
  const kib = (Deno.memoryUsage().rss - rss) / n / 1024;
  for (const b of [step, params, ...data]) b.destroy();
  return [kib, ms];
}

for (const c of CASES) {
  const shipped = await shaderSource(c.file);
  if (!shipped.includes("var<storage, read> p: Params;")) {
    console.log(
      `${c.file}: Params is no longer a read-only storage buffer; both rows measure the same shader`,
    );
  }
  for (const [form, code] of [["Step, Params uniform", AS_UNIFORM(shipped)], ["as shipped", shipped]]) {
    const [kib, ms] = await perDispatch(c, code!);
    console.log(
      `${`${c.file} ${c.entry} (${form})`.padEnd(44)} ${kib.toFixed(0).padStart(5)} KiB ${
        ms.toFixed(1).padStart(6)
      } ms per dispatch`,
    );
  }
}
device.destroy();
