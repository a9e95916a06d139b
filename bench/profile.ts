/**
 * Where a decode step's time goes: GPU time per kernel family (timestamp queries around each
 * dispatch in its own pass), the sum of kernels when they run back to back in one pass, the CPU
 * time to encode a step, and the wall time per step when steps are submitted back to back. With
 * `--upload-mib N`: the same steps, each after N MiB of `writeBuffer` (the expert upload path), with
 * the CPU time of the writes and the wall time they add per step.
 *
 * On the H200's Vulkan driver a pass per dispatch adds more than it measures (one row: 11.8 ms summed
 * against 5.4 ms a step back to back): read the family shares, and the wall time per step for totals.
 * With `--rows N`, each step decodes N sequences together (N slots at the same position, as a
 * batched decode step of the server's `--parallel N`).
 *
 * With `--ablate`: the wall time per step (steps back to back, as 3.) with each kernel family left out
 * in turn, alternating with the whole step: what a family costs inside the real pipeline, overlap and
 * dispatch gaps included, where timestamps around single dispatches mislead. (Leaving a family out
 * changes what later kernels read, never how much: every shape and workgroup count stays.)
 *
 * With `--prefill N`, each step is instead the prefill of one N-token prompt (positions 0 … N − 1, one
 * logits row), as the engine runs a prompt in one call of N rows.
 *
 *   deno run -A bench/profile.ts --model DIR [--pos 64] [--steps 64] [--rows 1] [--prefill 0] [--upload-mib 192] [--ablate]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { type Dispatch, encode, grid } from "../src/gpu/dispatch.ts";
import { callSplits, chunkRows, decodeRow, packRows, packStep } from "../src/kernels/step.ts";
import { passDispatches } from "../src/models/family.ts";
import { loadGpuModel } from "../src/runtime/gpu_model.ts";
import { planModel } from "../src/runtime/model_plan.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    pos: { type: "string", default: "64" },
    steps: { type: "string", default: "64" },
    rows: { type: "string", default: "1" },
    prefill: { type: "string", default: "0" },
    "upload-mib": { type: "string", default: "0" },
    ablate: { type: "boolean", default: false },
  },
});
const dir = values.model ?? new URL("../models/sotu-moe-mini", import.meta.url).pathname;
const pos = Number(values.pos);
const steps = Number(values.steps);
const prefill = Number(values.prefill);
const N = prefill > 0 ? 1 : Number(values.rows);
// the engine's own load path, every expert resident, routing masked as static and swapmoe route
const planned = await planModel({
  model: dir,
  contextLength: Math.max(1024, pos + steps + 1, prefill + 1),
  maxBatchSequences: N,
  ...(prefill > 0 ? { maxBatchTokens: prefill } : {}),
});
using ckpt = planned.ckpt;
const { plan } = planned;
const E = planned.arch.spec.numExperts;
const { gpu, memory, cache, program, step } = await loadGpuModel(planned, {
  budget: plan.fullBytes,
  slots: plan.slots(plan.fullBytes),
  masked: true,
  options: {},
});
const device = gpu.device;
for (let l = 0; l < cache.moeLayers; l++) for (let e = 0; e < E; e++) cache.load(l, e, 0);
cache.flush();
/** The call shape of a decode step at position `p`: N rows, one per slot (or the prompt's rows). */
const shapeAt = (p: number) => {
  if (prefill > 0) return { t: prefill, headRows: 1, pos0: 0, splits: callSplits(chunkRows(0, 0, prefill)) };
  const rows = Array.from({ length: N }, (_, i) => decodeRow(i, p, 1));
  return { t: N, headRows: N, pos0: p, splits: callSplits(rows) };
};
/** The Step and rows of decode step `s` at position `p` (slots 0 … N − 1, token s + 1 from token s). */
const writeStep = (p: number, s: number) => {
  if (prefill > 0) {
    device.queue.writeBuffer(step, 0, packStep(shapeAt(p), prefill - 1));
    device.queue.writeBuffer(program.io.rows, 0, packRows(chunkRows(0, 0, prefill)));
    return;
  }
  device.queue.writeBuffer(step, 0, packStep(shapeAt(p)));
  const rows = Array.from({ length: N }, (_, i) => decodeRow(i, p, s + 1));
  device.queue.writeBuffer(program.io.rows, 0, packRows(rows));
};
writeStep(pos, 0);
const all: Dispatch[] = [...passDispatches(program.decoder), program.sample];
await device.queue.onSubmittedWorkDone();

// 1. per-dispatch GPU time
const qs = device.createQuerySet({ type: "timestamp", count: 2 * all.length });
const res = device.createBuffer({
  size: 16 * all.length,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const rb = device.createBuffer({
  size: 16 * all.length,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});
const families = new Map<string, number>();
for (let rep = 0; rep < 3; rep++) {
  const enc = device.createCommandEncoder();
  all.forEach((d, i) => {
    // a dispatch the call does not run (the grouped experts at decode) still gets its (empty) pass,
    // so that every query is written
    const n = d.workgroups(shapeAt(pos));
    const pass = enc.beginComputePass({
      timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
    });
    if (n <= 0) {
      pass.end();
      return;
    }
    const [x, y] = grid(n);
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(x, y);
    pass.end();
  });
  enc.resolveQuerySet(qs, 0, 2 * all.length, res, 0);
  enc.copyBufferToBuffer(res, 0, rb, 0, 16 * all.length);
  device.queue.submit([enc.finish()]);
  await rb.mapAsync(GPUMapMode.READ);
  const ts = new BigInt64Array(rb.getMappedRange().slice(0));
  rb.unmap();
  families.clear();
  all.forEach((d, i) => {
    const k = d.label.replace(/^layer\d+\./, "");
    families.set(k, (families.get(k) ?? 0) + Number(ts[2 * i + 1]! - ts[2 * i]!) / 1000);
  });
}
const kernelSum = [...families.values()].reduce((a, b) => a + b, 0);

// 2. one pass, all dispatches back to back
const q2 = device.createQuerySet({ type: "timestamp", count: 2 });
const r2 = device.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
const b2 = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
let onePass = 0;
for (let rep = 0; rep < 3; rep++) {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass({
    timestampWrites: { querySet: q2, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
  });
  encode(pass, all, shapeAt(pos));
  pass.end();
  enc.resolveQuerySet(q2, 0, 2, r2, 0);
  enc.copyBufferToBuffer(r2, 0, b2, 0, 16);
  device.queue.submit([enc.finish()]);
  await b2.mapAsync(GPUMapMode.READ);
  const ts = new BigInt64Array(b2.getMappedRange().slice(0));
  b2.unmap();
  onePass = Number(ts[1]! - ts[0]!) / 1000;
}

// 3. CPU encode time and wall time per step, steps submitted back to back
/**
 * `steps` steps of `dispatches` back to back, each after `before` (uploads, timed apart): CPU µs per
 * step in `before`, CPU µs per step to encode and submit, wall µs per step.
 */
async function backToBack(dispatches: readonly Dispatch[], before?: () => void) {
  await device.queue.onSubmittedWorkDone();
  let beforeUs = 0;
  let encodeUs = 0;
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    const tb = performance.now();
    before?.();
    const te = performance.now();
    beforeUs += (te - tb) * 1000;
    writeStep(pos + s, s);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encode(pass, dispatches, shapeAt(pos + s));
    pass.end();
    device.queue.submit([enc.finish()]);
    encodeUs += (performance.now() - te) * 1000;
  }
  await device.queue.onSubmittedWorkDone();
  return {
    beforeUs: beforeUs / steps,
    encodeUs: encodeUs / steps,
    wallUs: ((performance.now() - t0) * 1000) / steps,
  };
}
await backToBack(all); // warm-up
const { encodeUs, wallUs: wallPerStep } = await backToBack(all);
const running = all.filter((d) => d.workgroups(shapeAt(pos)) > 0).length;

console.log(
  `adapter: ${gpu.info.description}; ${dir}; position ${pos}; ${N} row${
    N > 1 ? "s" : ""
  } per step; ${running} dispatches per step (${all.length} recorded)`,
);
console.log("| kernel family | µs per step | share |\n|---|---:|---:|");
for (const [k, v] of [...families].sort((a, b) => b[1] - a[1])) {
  console.log(`| ${k} | ${v.toFixed(1)} | ${(100 * v / kernelSum).toFixed(1)} % |`);
}
console.log(`\n| measure | µs per step |\n|---|---:|`);
console.log(`| sum of kernels, each in its own pass | ${kernelSum.toFixed(0)} |`);
console.log(`| all kernels in one pass (GPU) | ${onePass.toFixed(0)} |`);
console.log(`| CPU encode + submit | ${encodeUs.toFixed(0)} |`);
console.log(
  `| wall per step, ${steps} steps back to back | ${wallPerStep.toFixed(0)} (${
    (1e6 / wallPerStep).toFixed(0)
  } steps/s) |`,
);

// 3b. each family left out in turn, against the whole step measured just before it (median of 3 pairs)
if (values.ablate) {
  const family = (d: Dispatch) => d.label.replace(/^layer\d+\./, "");
  const names = [...new Set(all.filter((d) => d.workgroups(shapeAt(pos)) > 0).map(family))];
  const median = (v: number[]) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
  console.log(`\nEach kernel family left out (wall µs per step, ${steps} steps back to back, median of 3):`);
  console.log("| family | dispatches | whole step | without it | family's cost | CPU encode without |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const name of names) {
    const rest = all.filter((d) => family(d) !== name);
    const whole: number[] = [];
    const without: number[] = [];
    const enc: number[] = [];
    for (let rep = 0; rep < 3; rep++) {
      whole.push((await backToBack(all)).wallUs);
      const r = await backToBack(rest);
      without.push(r.wallUs);
      enc.push(r.encodeUs);
    }
    const w = median(whole);
    const wo = median(without);
    console.log(
      `| ${name} | ${all.length - rest.length} | ${w.toFixed(0)} | ${wo.toFixed(0)} | ${
        (w - wo).toFixed(0)
      } | ${median(enc).toFixed(0)} |`,
    );
  }
}

// 4. uploads: back-to-back steps with and without `--upload-mib` of writeBuffer before each (one
// expert matrix per call, as the engine uploads), alternating so both see the same warmed-up GPU. The
// CPU time of the writes is measured; while the CPU keeps ahead of the GPU, any rise in wall time per
// step is the GPU's time for the copies, which WebGPU's one queue runs between the steps' passes.
const uploadMiB = Number(values["upload-mib"]);
if (uploadMiB > 0) {
  const source = ckpt.bytes(planned.tensors.expertPieces(0, 0, 0)[0]!.tensor); // one expert matrix: 4 MiB for OLMoE
  const chunk = source.byteLength;
  const chunks = Math.ceil((uploadMiB * 2 ** 20) / chunk);
  const scratch = device.createBuffer({
    size: chunks * chunk,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  });
  const run = async (writes: number) => {
    const r = await backToBack(all, () => {
      for (let c = 0; c < writes; c++) device.queue.writeBuffer(scratch, c * chunk, source);
    });
    return { writeUs: r.beforeUs, encUs: r.encodeUs, wallUs: r.wallUs };
  };
  await run(0); // warm-up
  console.log(
    `\nEach step preceded by ${chunks} writeBuffer calls of ${
      (chunk / 2 ** 20).toFixed(2)
    } MiB (µs per step):`,
  );
  console.log("| run | wall, no uploads | CPU writes | CPU encode | wall with uploads | added |");
  console.log("|---|---:|---:|---:|---:|---:|");
  for (let rep = 0; rep < 3; rep++) {
    const base = await run(0);
    const up = await run(chunks);
    console.log(
      `| ${rep + 1} | ${base.wallUs.toFixed(0)} | ${up.writeUs.toFixed(0)} | ${up.encUs.toFixed(0)} | ${
        up.wallUs.toFixed(0)
      } | ${(up.wallUs - base.wallUs).toFixed(0)} |`,
    );
  }
  scratch.destroy();
}
memory.freeAll();
device.destroy();
