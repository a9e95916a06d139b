/** The split-key attention kernels against a plain CPU reference, on random shapes. */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { kernelContext } from "../gpu/dispatch.ts";
import { attention, attentionScratchBytes } from "./attention.ts";
import { callSplits, chunkRows, decodeRow, packRows, packStep, type RowMeta } from "./step.ts";
import { runAndRead } from "../../tests/support/gpu_read.ts";
import { rng } from "../../tests/support/random.ts";

/** Where each query sits: its sequence's slot and its position (src/kernels/step.ts `Row`). */
interface Query {
  slot: number;
  pos: number;
}

/**
 * out[t, h] = softmax(q·Kᵀ/√hd over the keys of query t's slot at positions ≤ its own, within the
 * window) · V, in f64; with `sinks`, head h's sink logit is one more column of the softmax whose
 * probability is dropped (transformers' gpt-oss). k, v: [slots, ctx, Hkv, hd].
 */
function reference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  queries: readonly Query[],
  o: { ctx: number; H: number; Hkv: number; hd: number; window: number },
  sinks?: Float32Array,
): Float32Array {
  const out = new Float32Array(queries.length * o.H * o.hd);
  queries.forEach(({ slot, pos }, t) => {
    const row = (j: number, kvh: number) => ((slot * o.ctx + j) * o.Hkv + kvh) * o.hd;
    for (let h = 0; h < o.H; h++) {
      const kvh = Math.floor(h / (o.H / o.Hkv));
      const n = pos + 1;
      const first = o.window > 0 ? Math.max(0, n - o.window) : 0;
      const s: number[] = [];
      for (let j = first; j < n; j++) {
        let d = 0;
        for (let i = 0; i < o.hd; i++) d += q[(t * o.H + h) * o.hd + i]! * k[row(j, kvh) + i]!;
        s.push(d / Math.sqrt(o.hd));
      }
      const sink = sinks?.[h];
      const m = Math.max(...s, sink ?? -Infinity);
      const e = s.map((x) => Math.exp(x - m));
      const z = e.reduce((a, b) => a + b, 0) + (sink === undefined ? 0 : Math.exp(sink - m));
      for (let i = 0; i < o.hd; i++) {
        let acc = 0;
        e.forEach((w, jj) => (acc += w * v[row(first + jj, kvh) + i]!));
        out[(t * o.H + h) * o.hd + i] = acc / z;
      }
    }
  });
  return out;
}

/** `n` values exactly representable in bf16, as bf16 bits and as f32. */
function bf16Values(
  n: number,
  rand: () => number,
  scale: number,
): { bits: Uint16Array<ArrayBuffer>; values: Float32Array<ArrayBuffer> } {
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

/** One attention case: geometry, the call's rows, and the window and sinks. */
interface Case {
  H: number;
  Hkv: number;
  hd: number;
  window: number;
  sinks?: boolean;
  /** Slots of `ctx` positions in the cache. */
  slots: number;
  ctx: number;
  rows: RowMeta[];
}

/** A prefill chunk (or decode step, t = 1) of one sequence in slot 0, its cache just long enough. */
function chunk(
  c: { t: number; pos0: number; H: number; Hkv: number; hd: number; window: number; sinks?: boolean },
): Case {
  return { ...c, slots: 1, ctx: c.pos0 + c.t, rows: chunkRows(0, c.pos0, c.t) };
}

/** Runs `c` on the GPU with `q` and the cache given, and returns the output [rows, H, hd]. */
async function runCase(
  gpu: { device: GPUDevice },
  c: Case,
  data: {
    q: Float32Array<ArrayBuffer>;
    k: Float32Array<ArrayBuffer>;
    v: Float32Array<ArrayBuffer>;
    sinks?: Uint16Array<ArrayBuffer>;
  },
): Promise<Float32Array> {
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 16);
  try {
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const upload = (name: string, a: ArrayBufferView<ArrayBuffer>) => {
      const b = memory.alloc(name, Math.max(4, Math.ceil(a.byteLength / 4) * 4), S, "activations");
      device.queue.writeBuffer(b.buffer, 0, a.buffer, a.byteOffset, Math.ceil(a.byteLength / 4) * 4);
      return b.buffer;
    };
    const t = c.rows.length;
    // [H] bf16, padded to 4 bytes
    const sinkBuf = data.sinks
      ? upload("sinks", Uint16Array.from({ length: Math.ceil(c.H / 2) * 2 }, (_, i) => data.sinks![i] ?? 0))
      : undefined;
    const partials = memory.alloc("partials", attentionScratchBytes(t, c.H, c.hd), S, "activations");
    const out = memory.alloc("out", t * c.H * c.hd * 4, S, "activations");
    const ds = await attention(ctx, {
      label: "attention",
      numHeads: c.H,
      numKvHeads: c.Hkv,
      headDim: c.hd,
      contextLength: c.ctx,
      q: upload("q", data.q),
      kCache: upload("k", data.k),
      vCache: upload("v", data.v),
      rows: upload("rows", packRows(c.rows)),
      partials: partials.buffer,
      out: out.buffer,
      window: c.window || null,
      sinks: sinkBuf,
    });
    const shape = { t, headRows: 0, pos0: c.rows[0]!.pos, splits: callSplits(c.rows) };
    device.queue.writeBuffer(step.buffer, 0, packStep(shape));
    return new Float32Array(await runAndRead(device, ds, shape, out.buffer, out.size));
  } finally {
    memory.freeAll();
  }
}

/** Random q and cache for `c`, and its sinks (bf16) when it has them. */
function inputs(c: Case, rand: () => number) {
  const q = Float32Array.from({ length: c.rows.length * c.H * c.hd }, rand);
  const k = Float32Array.from({ length: c.slots * c.ctx * c.Hkv * c.hd }, () => 4 * rand());
  const v = Float32Array.from({ length: c.slots * c.ctx * c.Hkv * c.hd }, rand);
  // sinks of either sign and above the scores too, so that they shift the softmax's maximum
  const sinks = c.sinks ? bf16Values(c.H, rand, 8) : undefined;
  return { q, k, v, sinks };
}

Deno.test("attention: split-key partials and combine equal the reference", async () => {
  const gpu = await createGpu();
  try {
    const cases: Case[] = [
      chunk({ t: 1, pos0: 300, H: 4, Hkv: 2, hd: 32, window: 0 }), // decode over 5 splits, grouped KV
      chunk({ t: 7, pos0: 130, H: 6, Hkv: 3, hd: 48, window: 0 }), // prefill chunk after a cache
      chunk({ t: 5, pos0: 0, H: 2, Hkv: 2, hd: 16, window: 0 }), // first chunk
      chunk({ t: 3, pos0: 1100, H: 2, Hkv: 1, hd: 64, window: 0 }), // more keys than 16 × 64
      chunk({ t: 4, pos0: 200, H: 4, Hkv: 4, hd: 32, window: 70 }), // sliding window
      // gpt-oss: a sink logit per head, with and without a window shorter than the sequence
      chunk({ t: 9, pos0: 0, H: 4, Hkv: 2, hd: 16, window: 6, sinks: true }), // prefill longer than the window
      chunk({ t: 1, pos0: 140, H: 4, Hkv: 2, hd: 32, window: 0, sinks: true }), // decode over 3 splits
      chunk({ t: 3, pos0: 300, H: 6, Hkv: 2, hd: 16, window: 128, sinks: true }), // window across splits
      // a batched call: decode rows of three sequences in their own slots, at positions far apart (1, 5,
      // 16 splits), and a prompt chunk of a fourth packed between them
      {
        H: 4,
        Hkv: 2,
        hd: 32,
        window: 0,
        slots: 4,
        ctx: 1200,
        rows: [decodeRow(2, 40, 3), ...chunkRows(0, 60, 3), decodeRow(3, 1150, 9), decodeRow(1, 300, 1)],
      },
      {
        H: 4,
        Hkv: 4,
        hd: 16,
        window: 50,
        sinks: true,
        slots: 3,
        ctx: 400,
        rows: [decodeRow(1, 399, 2), decodeRow(0, 20, 5), ...chunkRows(2, 128, 5)],
      },
    ];
    const rand = rng(7);
    for (const c of cases) {
      const data = inputs(c, rand);
      const got = await runCase(gpu, c, { ...data, sinks: data.sinks?.bits });
      const want = reference(data.q, data.k, data.v, c.rows, c, data.sinks?.values);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
      assert.ok(err < 1e-5, `${JSON.stringify({ ...c, rows: c.rows.length })}: max error ${err}`);
    }
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("attention: a row of a batched call gives exactly what it gives in a call of its own", async () => {
  const gpu = await createGpu();
  try {
    const c: Case = {
      H: 4,
      Hkv: 2,
      hd: 32,
      window: 0,
      slots: 3,
      ctx: 2100,
      // rows split 128 and 64 keys at a time (positions past and below 16 × 64)
      rows: [decodeRow(1, 2000, 4), decodeRow(0, 700, 2), ...chunkRows(2, 64, 4), decodeRow(2, 1500, 7)],
    };
    const data = inputs(c, rng(11));
    const batched = await runCase(gpu, c, { ...data, sinks: undefined });
    const width = c.H * c.hd;
    for (const [t, row] of c.rows.entries()) {
      const alone = await runCase(gpu, { ...c, rows: [row] }, {
        ...data,
        sinks: undefined,
        q: data.q.slice(t * width, (t + 1) * width),
      });
      assert.deepEqual(batched.slice(t * width, (t + 1) * width), alone, `row ${t} (${JSON.stringify(row)})`);
    }
  } finally {
    gpu.device.destroy();
  }
});
