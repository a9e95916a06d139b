/**
 * Expert upload paths from a memory-mapped shard to a GPU buffer: `queue.writeBuffer` straight from
 * the mapped view, and mapped staging buffers (a ring, mapped ahead) + `copyBufferToBuffer`, at
 * several chunk sizes. Each figure is bytes over the wall time until the GPU has the data
 * (`onSubmittedWorkDone`). Prints a table and writes JSON with `--out`.
 *
 *   deno run -A bench/upload.ts --file SHARD.safetensors [--mib 1024] [--out upload.json]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { MappedFile } from "../ffi/mmap.ts";
import { createGpu } from "../src/gpu/device.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { file: { type: "string" }, mib: { type: "string", default: "1024" }, out: { type: "string" } },
});
if (!values.file) {
  console.error("usage: upload.ts --file SHARD [--mib N] [--out FILE]");
  Deno.exit(2);
}
using file = MappedFile.open(values.file);
const total = Math.min(Number(values.mib) * 2 ** 20, Math.floor(file.byteLength / 2 ** 20) * 2 ** 20);
const gpu = await createGpu();
const device = gpu.device;
const dst = device.createBuffer({
  size: Math.min(total, 1 << 30),
  usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
});
const rows: { path: string; chunkMiB: number; gbPerSecond: number }[] = [];
// warm the page cache so that the figure is the GPU path, not the disk
{
  let s = 0;
  for (let o = 0; o < total; o += 4096) s += file.bytes(o, 1)[0]!;
  if (s < 0) console.log(s);
}

for (const chunk of [1, 4, 12, 64].map((m) => m * 2 ** 20)) {
  // writeBuffer from the mapped view
  await device.queue.onSubmittedWorkDone();
  let t = performance.now();
  for (let o = 0; o + chunk <= total; o += chunk) {
    device.queue.writeBuffer(dst, o % dst.size, file.bytes(o, chunk));
  }
  await device.queue.onSubmittedWorkDone();
  rows.push({
    path: "writeBuffer(mapped view)",
    chunkMiB: chunk / 2 ** 20,
    gbPerSecond: total / ((performance.now() - t) * 1e6),
  });

  // a ring of mapped staging buffers: fill on the CPU, copy on the GPU, map again in the background
  const ring = Array.from(
    { length: 4 },
    () =>
      device.createBuffer({
        size: chunk,
        usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
        mappedAtCreation: true,
      }),
  );
  const ready: Promise<void>[] = ring.map(() => Promise.resolve());
  t = performance.now();
  let i = 0;
  for (let o = 0; o + chunk <= total; o += chunk, i++) {
    const k = i % ring.length;
    await ready[k];
    const b = ring[k]!;
    new Uint8Array(b.getMappedRange()).set(file.bytes(o, chunk));
    b.unmap();
    const enc = device.createCommandEncoder();
    enc.copyBufferToBuffer(b, 0, dst, o % dst.size, chunk);
    device.queue.submit([enc.finish()]);
    ready[k] = b.mapAsync(GPUMapMode.WRITE);
  }
  await Promise.all(ready);
  await device.queue.onSubmittedWorkDone();
  rows.push({
    path: "staging ring + copyBufferToBuffer",
    chunkMiB: chunk / 2 ** 20,
    gbPerSecond: total / ((performance.now() - t) * 1e6),
  });
  ring.forEach((b) => b.destroy());
}
console.log(`adapter: ${gpu.info.description}; ${total / 2 ** 20} MiB per measurement`);
console.log("| path | chunk | GB/s |\n|---|---:|---:|");
for (const r of rows) console.log(`| ${r.path} | ${r.chunkMiB} MiB | ${r.gbPerSecond.toFixed(2)} |`);
if (values.out) {
  await Deno.writeTextFile(values.out, JSON.stringify({ adapter: gpu.info.description, rows }, null, 1));
}
dst.destroy();
device.destroy();
