/**
 * `deno bench` for the kernels, each fast kernel against the reference it is tested against
 * (`Deno.bench` groups with the reference as baseline). Every iteration submits `REPS` dispatches and
 * waits for the GPU, so the figure is GPU time per dispatch plus one ~10 ms completion wait spread
 * over the reps; `bench/kernels.ts` gives exact GPU times with timestamp queries where the adapter
 * has them.
 *
 *   deno bench -A bench/kernels_bench.ts
 *
 * @module
 */
import { createGpu } from "../src/gpu/device.ts";
import { type Dispatch, encode, kernelContext } from "../src/gpu/dispatch.ts";
import { matmul } from "../src/kernels/matmul.ts";
import { packStep } from "../src/kernels/step.ts";

const REPS = 20;
const gpu = await createGpu();
const device = gpu.device;
const { memory, stepBuffer: step, ctx } = kernelContext(device, 16);
const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
const [outDim, inDim] = [1024, 1024];
const w = memory.alloc("w", outDim * inDim * 2, S, "dense").buffer;
const x = memory.alloc("x", inDim * 4, S, "activations").buffer;
const y = memory.alloc("y", outDim * 4, S, "activations").buffer;
device.queue.writeBuffer(step.buffer, 0, packStep({ t: 1, headRows: 1, pos0: 0 }));

async function run(d: Dispatch): Promise<void> {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let i = 0; i < REPS; i++) encode(pass, [d], { t: 1, headRows: 1, pos0: 0 });
  pass.end();
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
}

// (one row: the GEMV of each, the first dispatch recorded)
const [reference] = await matmul(ctx, { label: "ref", weight: w, x, y, inDim, outDim, reference: true });
const [fast] = await matmul(ctx, { label: "fast", weight: w, x, y, inDim, outDim });
const bytes = outDim * inDim * 2 * REPS;

Deno.bench(`matmul reference, ${outDim}×${inDim} bf16 × ${REPS} (${bytes / 2 ** 20} MiB)`, {
  group: "gemv",
  baseline: true,
}, async () => await run(reference!));
Deno.bench(
  `matmul gemv8, ${outDim}×${inDim} bf16 × ${REPS} (${bytes / 2 ** 20} MiB)`,
  { group: "gemv" },
  async () => await run(fast!),
);

globalThis.addEventListener("unload", () => {
  memory.freeAll();
  device.destroy();
});
