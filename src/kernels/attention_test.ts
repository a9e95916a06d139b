/** The split-key attention kernels against a plain CPU reference, on random shapes. */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { encode, kernelContext } from "../gpu/dispatch.ts";
import { attention, attentionScratchBytes } from "./attention.ts";
import { packStep } from "./step.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

/**
 * out[t, h] = softmax(q·Kᵀ/√hd over keys ≤ pos0 + t within the window) · V, in f64; with `sinks`, head h's
 * sink logit is one more column of the softmax whose probability is dropped (transformers' gpt-oss).
 */
function reference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  o: { t: number; pos0: number; H: number; Hkv: number; hd: number; window: number },
  sinks?: Float32Array,
): Float32Array {
  const out = new Float32Array(o.t * o.H * o.hd);
  for (let t = 0; t < o.t; t++) {
    for (let h = 0; h < o.H; h++) {
      const kvh = Math.floor(h / (o.H / o.Hkv));
      const n = o.pos0 + t + 1;
      const first = o.window > 0 ? Math.max(0, n - o.window) : 0;
      const s: number[] = [];
      for (let j = first; j < n; j++) {
        let d = 0;
        for (let i = 0; i < o.hd; i++) d += q[(t * o.H + h) * o.hd + i]! * k[(j * o.Hkv + kvh) * o.hd + i]!;
        s.push(d / Math.sqrt(o.hd));
      }
      const sink = sinks?.[h];
      const m = Math.max(...s, sink ?? -Infinity);
      const e = s.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0) + (sink === undefined ? 0 : Math.exp(sink - m));
      for (let i = 0; i < o.hd; i++) {
        let acc = 0;
        e.forEach((w, jj) => (acc += w * v[((first + jj) * o.Hkv + kvh) * o.hd + i]!));
        out[(t * o.H + h) * o.hd + i] = acc / z;
      }
    }
  }
  return out;
}

/** `n` values exactly representable in bf16, as bf16 bits and as f32. */
function bf16Values(
  n: number,
  rand: () => number,
  scale: number,
): { bits: Uint16Array; values: Float32Array } {
  const values = new Float32Array(n);
  const bits = new Uint16Array(n);
  const u = new Uint32Array(values.buffer);
  for (let i = 0; i < n; i++) {
    values[i] = scale * rand();
    bits[i] = u[i]! >>> 16;
    u[i] = bits[i]! << 16;
  }
  return { bits, values };
}

Deno.test("attention: split-key partials and combine equal the reference", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 16);
  try {
    const cases = [
      { t: 1, pos0: 300, H: 4, Hkv: 2, hd: 32, window: 0 }, // decode over 5 splits, grouped KV
      { t: 7, pos0: 130, H: 6, Hkv: 3, hd: 48, window: 0 }, // prefill chunk after a cache
      { t: 5, pos0: 0, H: 2, Hkv: 2, hd: 16, window: 0 }, // first chunk
      { t: 3, pos0: 1100, H: 2, Hkv: 1, hd: 64, window: 0 }, // more keys than 16 × 64
      { t: 4, pos0: 200, H: 4, Hkv: 4, hd: 32, window: 70 }, // sliding window
      // gpt-oss: a sink logit per head, with and without a window shorter than the sequence
      { t: 9, pos0: 0, H: 4, Hkv: 2, hd: 16, window: 6, sinks: true }, // prefill longer than the window
      { t: 1, pos0: 140, H: 4, Hkv: 2, hd: 32, window: 0, sinks: true }, // decode over 3 splits
      { t: 3, pos0: 300, H: 6, Hkv: 2, hd: 16, window: 128, sinks: true }, // window across splits
    ];
    const rand = rng(7);
    for (const c of cases) {
      const ctxLen = c.pos0 + c.t;
      const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
      const q = Float32Array.from({ length: c.t * c.H * c.hd }, rand);
      const k = Float32Array.from({ length: ctxLen * c.Hkv * c.hd }, () => 4 * rand());
      const v = Float32Array.from({ length: ctxLen * c.Hkv * c.hd }, rand);
      const bufs = [q, k, v].map((a, i) => {
        const b = memory.alloc(`in${i}`, a.byteLength, S, "activations");
        device.queue.writeBuffer(b.buffer, 0, a);
        return b;
      });
      // sinks of either sign and above the scores too, so that they shift the softmax's maximum
      const sinks = "sinks" in c ? bf16Values(c.H, rand, 8) : undefined;
      const sinkBuf = sinks ? memory.alloc("sinks", Math.ceil(c.H / 2) * 4, S, "activations") : undefined;
      if (sinks && sinkBuf) {
        const words = new Uint16Array(Math.ceil(c.H / 2) * 2); // [H] bf16, padded to 4 bytes
        words.set(sinks.bits);
        device.queue.writeBuffer(sinkBuf.buffer, 0, words);
      }
      const partials = memory.alloc("partials", attentionScratchBytes(c.t, c.H, c.hd), S, "activations");
      const out = memory.alloc("out", c.t * c.H * c.hd * 4, S, "activations");
      const read = device.createBuffer({
        size: out.size,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      ctx.params.reset();
      const ds = await attention(ctx, {
        label: "attention",
        numHeads: c.H,
        numKvHeads: c.Hkv,
        headDim: c.hd,
        contextLength: ctxLen,
        q: bufs[0]!.buffer,
        kCache: bufs[1]!.buffer,
        vCache: bufs[2]!.buffer,
        partials: partials.buffer,
        out: out.buffer,
        window: c.window || null,
        sinks: sinkBuf?.buffer,
      });
      const shape = { t: c.t, headRows: 0, pos0: c.pos0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape));
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      encode(pass, ds, shape);
      pass.end();
      enc.copyBufferToBuffer(out.buffer, 0, read, 0, out.size);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      const got = new Float32Array(read.getMappedRange().slice(0));
      read.unmap();
      read.destroy();
      const want = reference(q, k, v, c, sinks?.values);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
      assert.ok(err < 1e-5, `${JSON.stringify(c)}: max error ${err}`);
      for (const b of [...bufs, partials, out, ...(sinkBuf ? [sinkBuf] : [])]) memory.free(b);
    }
  } finally {
    memory.freeAll();
    device.destroy();
  }
});
