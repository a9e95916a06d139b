/**
 * Kernel bandwidth on the GPU, timed with timestamp queries (no readback per iteration): the bf16
 * GEMV of the dense projections, the expert GEMVs through the slot table, and the copy ceiling
 * (`copyBufferToBuffer`) they are measured against; then the experts of a batched decode step of 8 and
 * 16 rows and of a prefill chunk of 64 and of 512 rows, by the GEMV path and by the grouped path (tokens
 * grouped by expert, tiled matmuls) at a few tile shapes, with their arithmetic rate. Prints a table and
 * writes JSON with `--out`.
 *
 *   deno run -A bench/kernels.ts [--out kernels.json] [--iters 50]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createGpu } from "../src/gpu/device.ts";
import { type Dispatch, grid, kernelContext } from "../src/gpu/dispatch.ts";
import { rmsNorm } from "../src/kernels/norm.ts";
import {
  EXPERT_TILE,
  expertsGemv,
  expertsGrouped,
  groupedScratch,
  type TileShape,
} from "../src/kernels/experts.ts";
import { matrixLayout } from "../src/quant/formats.ts";
import { matmul } from "../src/kernels/matmul.ts";

/** One kernel measurement. */
export interface KernelRecord {
  kernel: string;
  shape: string;
  microseconds: number;
  bytes: number;
  gbPerSecond: number;
  ofCopyCeiling: number;
  /** Multiply-adds × 2 per second, for the prefill kernels. */
  tflops?: number;
}

const { values } = parseArgs({
  args: Deno.args,
  options: { out: { type: "string" }, iters: { type: "string", default: "50" } },
});
const iters = Number(values.iters);
const gpu = await createGpu();
const device = gpu.device;
if (!gpu.info.features.includes("timestamp-query")) throw new Error("This benchmark needs timestamp-query");
const { memory, stepBuffer: step, ctx } = kernelContext(device, 256);
const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
const buf = (label: string, bytes: number) => memory.alloc(label, bytes, S, "activations").buffer;
const queries = device.createQuerySet({ type: "timestamp", count: 2 });
const resolve = device.createBuffer({
  size: 16,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });

/** GPU time of `iters` repetitions of `record` in one pass, per repetition, in µs. */
async function time(
  encodeOnce: (pass: GPUComputePassEncoder | null, enc: GPUCommandEncoder) => void,
  compute = true,
) {
  const run = async (n: number) => {
    const enc = device.createCommandEncoder();
    if (compute) {
      const pass = enc.beginComputePass({
        timestampWrites: { querySet: queries, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
      });
      for (let i = 0; i < n; i++) encodeOnce(pass, enc);
      pass.end();
    } else {
      // copies: bracket with empty timestamped passes
      let p = enc.beginComputePass({ timestampWrites: { querySet: queries, beginningOfPassWriteIndex: 0 } });
      p.end();
      for (let i = 0; i < n; i++) encodeOnce(null, enc);
      p = enc.beginComputePass({ timestampWrites: { querySet: queries, endOfPassWriteIndex: 1 } });
      p.end();
    }
    enc.resolveQuerySet(queries, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigInt64Array(read.getMappedRange().slice(0));
    read.unmap();
    return Number(t[1]! - t[0]!) / 1000 / n;
  };
  await run(2);
  return await run(iters);
}

const dispatchOnce = (d: Dispatch, t: number) => (pass: GPUComputePassEncoder | null) => {
  const [x, y] = grid(d.workgroups({ t, headRows: 1, pos0: 0 }));
  pass!.setPipeline(d.pipeline);
  pass!.setBindGroup(0, d.bindGroup);
  pass!.dispatchWorkgroups(x, y);
};

const records: KernelRecord[] = [];
// copy ceiling: 1 GiB buffer to buffer
const big = 256 * 2 ** 20;
const src = buf("copy.src", big);
const dst = buf("copy.dst", big);
const copyUs = await time((_p, enc) => enc.copyBufferToBuffer(src, 0, dst, 0, big), false);
const ceiling = (2 * big) / (copyUs * 1e3); // read + write, GB/s
records.push({
  kernel: "copyBufferToBuffer",
  shape: "256 MiB",
  microseconds: copyUs,
  bytes: 2 * big,
  gbPerSecond: ceiling,
  ofCopyCeiling: 1,
});

// dense projections: GEMVs of one row and of 16 (a step of 16 sequences decoded together: `bytes` counts
// the weights once, as the row tiles' workgroups read them side by side), and the tiled kernel of
// prefill chunks of 64 and 512 rows (with their arithmetic rate)
for (
  const [o, i, label, rows] of [
    [2048, 2048, "q_proj (OLMoE)", 1],
    [50304, 2048, "lm_head (OLMoE)", 1],
    [50304, 2048, "lm_head (OLMoE)", 16],
    [14336, 4096, "w1 (Mixtral)", 1],
    [6144, 2048, "qkv_proj (OLMoE)", 64],
    [6144, 2048, "qkv_proj (OLMoE)", 512],
    [2048, 2048, "o_proj (OLMoE)", 64],
    [2048, 2048, "o_proj (OLMoE)", 512],
  ] as const
) {
  device.queue.writeBuffer(step.buffer, 0, new Uint32Array([rows, 0, 0, 1, 0, 0, 0, 0]));
  const w = buf(`w.${label}.${rows}`, o * i * 2);
  const x = buf(`x.${label}.${rows}`, rows * i * 4);
  const y = buf(`y.${label}.${rows}`, rows * o * 4);
  // the dispatch a call of `rows` rows runs (the GEMV or the tiled kernel)
  const d = (await matmul(ctx, { label, weight: w, x, y, inDim: i, outDim: o }))
    .find((d) => d.workgroups({ t: rows, headRows: 1, pos0: 0 }) > 0)!;
  const us = await time(dispatchOnce(d, rows));
  const bytes = o * i * 2 + rows * (i * 4 + o * 4);
  const gbs = bytes / (us * 1e3);
  records.push({
    kernel: `matmul ${label}`,
    shape: `${o}×${i} bf16, ${rows} row${rows === 1 ? "" : "s"}`,
    microseconds: us,
    bytes,
    gbPerSecond: gbs,
    ofCopyCeiling: gbs / ceiling,
    tflops: rows >= 64 ? (2 * rows * o * i) / (us * 1e6) : undefined,
  });
}

// experts of one OLMoE layer: 64 slots, top-8, D 2048, I 1024, one token, at each precision; bytes
// are those the kernel reads (codes, scales and minimums of the 8 chosen experts)
device.queue.writeBuffer(step.buffer, 0, new Uint32Array([1, 0, 0, 1, 0, 0, 0, 0]));
for (const precision of ["bf16", "int8", "int4", "mxfp4"] as const) {
  const D = 2048, I = 1024, E = 64, K = 8;
  const matrix = matrixLayout(precision, I, D).bytes;
  const table = memory.alloc(`slots.${precision}`, E * 4, S, "tables").buffer;
  device.queue.writeBuffer(table, 0, new Int32Array(Array.from({ length: E }, (_, e) => e)));
  const ids = buf(`topk_ids.${precision}`, K * 4);
  device.queue.writeBuffer(ids, 0, new Uint32Array([3, 9, 17, 22, 40, 41, 50, 63]));
  const wts = buf(`topk_w.${precision}`, K * 4);
  device.queue.writeBuffer(wts, 0, new Float32Array(K).fill(1 / K));
  const layer = {
    label: `experts.${precision}`,
    layer: 0,
    dim: D,
    inter: I,
    topK: K,
    experts: E,
    topkIds: ids,
    topkW: wts,
    slots: table,
    x: buf(`x.${precision}`, D * 4),
    gate: buf(`gate.${precision}`, E * matrix),
    up: buf(`up.${precision}`, E * matrix),
    down: buf(`down.${precision}`, E * matrix),
    h: buf(`h.${precision}`, K * I * 4),
    y: buf(`y.${precision}`, D * 4),
    formats: [precision],
    highSlots: E,
  };
  const [d1, d2] = await expertsGemv(ctx, layer);
  const timed = async (d: Dispatch, bytes: number, kernel: string) => {
    const us = await time(dispatchOnce(d, 1));
    const gbs = bytes / (us * 1e3);
    records.push({
      kernel,
      shape: `OLMoE layer, top-8 of 64, 1 token`,
      microseconds: us,
      bytes,
      gbPerSecond: gbs,
      ofCopyCeiling: gbs / ceiling,
    });
  };
  await timed(d1!, K * 2 * matrix, `experts.gate_up ${precision}`);
  await timed(d2!, K * matrix, `experts.down ${precision}`);
  // the down projection at the workgroup sizes it ran or could run with (DOWN_THREADS is the engine's)
  for (const threads of [64, 128]) {
    const [, down] = await expertsGemv(ctx, {
      ...layer,
      label: `${layer.label}.wg${threads}`,
      downThreads: threads,
    });
    await timed(down!, K * matrix, `experts.down ${precision} (${threads} threads)`);
  }
}

// experts of one OLMoE layer (top-8 of 64, D 2048, I 1024) for a decode step of 8 and of 16 sequences
// decoded together, a prefill chunk of 64 rows (the default maxBatchTokens) and of 512, every expert
// resident, routed uniformly at random (seeded): the GEMV path
// (each token-expert reads its expert's weights) against the grouped path (group, tiled gate_up, tiled
// down, combine) at the default tile and three others. `bytes` is what must come from memory at least:
// every routed expert's weights once, and the activations; the GEMV path requests each expert's weights
// T·K/E times (8 or 64), mostly from cache.
{
  const K = 8, E = 64, D = 2048, I = 1024;
  const rows = [8, 16, 64, 512];
  const Tmax = Math.max(...rows);
  const tiles: TileShape[] = [
    EXPERT_TILE,
    { tokens: 32, rows: 128 },
    { tokens: 64, rows: 64 },
    { tokens: 128, rows: 64 },
  ];
  let seed = 7;
  const rand = () => (seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32;
  const routing = new Uint32Array(Tmax * K);
  for (let t = 0; t < Tmax; t++) {
    const picked = new Set<number>();
    while (picked.size < K) picked.add(Math.floor(rand() * E));
    routing.set([...picked], t * K);
  }
  for (const precision of ["bf16", "int4"] as const) {
    const matrix = matrixLayout(precision, I, D).bytes;
    const table = memory.alloc(`prefill.slots.${precision}`, E * 4, S, "tables").buffer;
    device.queue.writeBuffer(table, 0, new Int32Array(Array.from({ length: E }, (_, e) => e)));
    const ids = buf(`prefill.topk_ids.${precision}`, Tmax * K * 4);
    device.queue.writeBuffer(ids, 0, routing);
    const wts = buf(`prefill.topk_w.${precision}`, Tmax * K * 4);
    device.queue.writeBuffer(wts, 0, new Float32Array(Tmax * K).fill(1 / K));
    // scratch for the most rows and the smallest tile's route
    const scratch = groupedScratch({ rows: Tmax, topK: K, experts: E, dim: D }, { tokens: 32, rows: 128 })!;
    const o = {
      label: `prefill.${precision}`,
      layer: 0,
      dim: D,
      inter: I,
      topK: K,
      experts: E,
      topkIds: ids,
      topkW: wts,
      slots: table,
      x: buf(`prefill.x.${precision}`, Tmax * D * 4),
      gate: buf(`prefill.gate.${precision}`, E * matrix),
      up: buf(`prefill.up.${precision}`, E * matrix),
      down: buf(`prefill.down.${precision}`, E * matrix),
      h: buf(`prefill.h.${precision}`, Tmax * K * I * 4),
      y: buf(`prefill.y.${precision}`, Tmax * D * 4),
      formats: [precision],
      highSlots: E,
      grouped: {
        yk: buf(`prefill.yk.${precision}`, scratch.yk * 4),
        route: buf(`prefill.route.${precision}`, scratch.route * 4),
      },
    };
    const [g1, g2] = await expertsGemv(ctx, o);
    const grouped = await Promise.all(tiles.map((tile) => expertsGrouped(ctx, o, tile)));
    for (const T of rows) {
      device.queue.writeBuffer(step.buffer, 0, new Uint32Array([T, 0, 0, 1, 0, 0, 0, 0]));
      const routed = new Set(routing.subarray(0, T * K)).size;
      const shape = `OLMoE layer, top-8 of 64, ${T} tokens`;
      const flop = (matrices: number) => 2 * T * K * matrices * D * I;
      const add = (kernel: string, us: number, bytes: number, flops: number) => {
        const gbs = bytes / (us * 1e3);
        records.push({
          kernel,
          shape,
          microseconds: us,
          bytes,
          gbPerSecond: gbs,
          ofCopyCeiling: gbs / ceiling,
          tflops: flops > 0 ? flops / (us * 1e6) : undefined,
        });
      };
      // activations each kernel must read and write at least
      const xBytes = T * D * 4, hBytes = T * K * I * 4, ykBytes = T * K * D * 4;
      const gemv1 = await time(dispatchOnce(g1!, T));
      add(`experts.gate_up ${precision} (GEMV)`, gemv1, routed * 2 * matrix + xBytes + hBytes, flop(2));
      const gemv2 = await time(dispatchOnce(g2!, T));
      add(`experts.down ${precision} (GEMV)`, gemv2, routed * matrix + hBytes + 2 * xBytes, flop(1));
      add(`experts ${precision} (GEMV, both)`, gemv1 + gemv2, routed * 3 * matrix, flop(3));
      for (const [i, tile] of tiles.entries()) {
        const [group, gateUp, down, combine] = grouped[i]!;
        // the route the tiled kernels read: grouped once before timing them
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        dispatchOnce(group!, T)(pass);
        pass.end();
        device.queue.submit([enc.finish()]);
        const name = `tile ${tile.tokens}×${tile.rows}`;
        const us = [
          await time(dispatchOnce(group!, T)),
          await time(dispatchOnce(gateUp!, T)),
          await time(dispatchOnce(down!, T)),
          await time(dispatchOnce(combine!, T)),
        ];
        add(`experts.group (${name})`, us[0]!, 2 * T * K * 4, 0);
        add(
          `experts.gate_up_tiled ${precision} (${name})`,
          us[1]!,
          routed * 2 * matrix + xBytes + hBytes,
          flop(2),
        );
        add(`experts.down_tiled ${precision} (${name})`, us[2]!, routed * matrix + hBytes + ykBytes, flop(1));
        add(`experts.combine (${name})`, us[3]!, ykBytes + 2 * xBytes, 0);
        add(
          `experts ${precision} (grouped, ${name}, all four)`,
          us.reduce((a, b) => a + b),
          routed * 3 * matrix,
          flop(3),
        );
      }
    }
  }
}

// the floor of one dispatch: an in-place RMSNorm of one 2048-wide row (16 KB of traffic), repeated in one
// pass, each depending on the last: what a step's ~180 small dispatches cost beyond their bytes
{
  const w = buf("norm.w", 2048 * 2);
  const y = buf("norm.y", 2048 * 4);
  const d = await rmsNorm(ctx, { label: "norm", weight: w, y, cols: 2048, eps: 1e-6 });
  const us = await time(dispatchOnce(d, 1));
  records.push({
    kernel: "rmsNorm in place (dispatch floor)",
    shape: "1×2048 f32, back to back",
    microseconds: us,
    bytes: 2048 * 10,
    gbPerSecond: (2048 * 10) / (us * 1e3),
    ofCopyCeiling: (2048 * 10) / (us * 1e3) / ceiling,
  });
}

console.log(`adapter: ${gpu.info.description}`);
console.log("| kernel | shape | µs | GB/s | of copy ceiling | TFLOP/s |\n|---|---|---:|---:|---:|---:|");
for (const r of records) {
  console.log(
    `| ${r.kernel} | ${r.shape} | ${r.microseconds.toFixed(1)} | ${r.gbPerSecond.toFixed(0)} | ${
      (100 * r.ofCopyCeiling).toFixed(0)
    } % | ${r.tflops ? r.tflops.toFixed(2) : ""} |`,
  );
}
if (values.out) {
  await Deno.writeTextFile(values.out, JSON.stringify({ adapter: gpu.info.description, records }, null, 1));
}
memory.freeAll();
device.destroy();
