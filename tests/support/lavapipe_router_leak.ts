/**
 * Diagnostic, not a test: host memory per dispatch of `shaders/router.wgsl`'s `main`, as shipped and
 * with the `slots` read in `route()` replaced by a constant. On Mesa's lavapipe (llvmpipe, LLVM 15)
 * the shipped shader grows the process's RSS by about 90 KiB per workgroup, for ever (GC does not
 * help; the JS heap stays flat); without the `slots` read it does not; on an NVIDIA H200 neither does.
 * It makes long runs on lavapipe grow by tens of MiB per request (see bench/soak.ts).
 *
 * Usage: deno run -A tests/support/lavapipe_router_leak.ts
 */
const SHADERS = new URL("../../shaders/", import.meta.url);
const common = await Deno.readTextFile(new URL("common.wgsl", SHADERS));
const shipped = await Deno.readTextFile(new URL("router.wgsl", SHADERS));
const SLOTS_READ = "ok[e] = select(1u, 0u, use_mask && slots[p.layer * p.experts + e] < 0);";

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("No WebGPU adapter");
const device = await adapter.requestDevice({ requiredLimits: { maxStorageBuffersPerShaderStage: 10 } });
console.log(`adapter: ${adapter.info.description || adapter.info.vendor}`);
const T = 8, E = 16, K = 4, D = 64;

async function kibPerDispatch(router: string): Promise<number> {
  const module = device.createShaderModule({ code: `${common}\n${router}` });
  const pipeline = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  const buf = (n: number, usage: number = GPUBufferUsage.STORAGE) =>
    device.createBuffer({ size: Math.max(16, n * 4), usage: usage | GPUBufferUsage.COPY_DST });
  const step = buf(8, GPUBufferUsage.UNIFORM);
  device.queue.writeBuffer(step, 0, new Uint32Array([T, 0, 0, 0, 0, 0, 0, 0]));
  const params = buf(8, GPUBufferUsage.UNIFORM);
  device.queue.writeBuffer(params, 0, new Uint32Array([E, K, 0, 0, 0, D, 0, 0]));
  const logits = buf(T * E);
  device.queue.writeBuffer(logits, 0, new Float32Array(T * E).map((_, i) => Math.sin(i)));
  const buffers = [
    step,
    params,
    logits,
    buf(E),
    buf(T * D),
    buf(T * K),
    buf(T * K),
    buf(T * K),
    buf(T * K),
    buf(T),
  ];
  const bindGroup = device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  const run = async () => {
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(T);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  for (let i = 0; i < 5; i++) await run();
  const before = Deno.memoryUsage().rss;
  for (let i = 0; i < 200; i++) await run();
  for (const b of buffers) b.destroy();
  return (Deno.memoryUsage().rss - before) / 200 / 1024;
}

if (!shipped.includes(SLOTS_READ)) {
  console.log("router.wgsl changed: the variant below equals the shipped one");
}
console.log(
  `shipped router.wgsl:      ${
    (await kibPerDispatch(shipped)).toFixed(1)
  } KiB per dispatch of ${T} workgroups`,
);
console.log(
  `without the slots read:   ${
    (await kibPerDispatch(shipped.replace(SLOTS_READ, "ok[e] = 1u;"))).toFixed(1)
  } KiB`,
);
device.destroy();
