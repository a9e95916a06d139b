/** The matmul kernels (reference, vectorised GEMV and tiled) against a CPU reference, on random shapes. */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { kernelContext } from "../gpu/dispatch.ts";
import { fastPathApplies, matmul, tiledApplies, tiledRuns } from "./matmul.ts";
import { packStep } from "./step.ts";
import { runAndRead } from "../../tests/support/gpu_read.ts";
import { bf16, rng } from "../../tests/support/random.ts";

Deno.test("matmul: reference, vectorised and tiled kernels equal a CPU GEMM (bias, accumulate, logits rows)", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  try {
    const rand = rng(3);
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const cases = [
      { rows: 1, inDim: 2048, outDim: 37, bias: false, acc: false, head: false },
      { rows: 5, inDim: 72, outDim: 130, bias: true, acc: false, head: false },
      { rows: 9, inDim: 136, outDim: 19, bias: false, acc: true, head: false },
      { rows: 6, inDim: 40, outDim: 66, bias: false, acc: false, head: true },
      { rows: 3, inDim: 94, outDim: 21, bias: true, acc: true, head: false }, // in_dim not a multiple of 8
      // the tiled kernel: part tiles of rows and outputs, in_dim not a multiple of its 16-column stages
      { rows: 70, inDim: 136, outDim: 3000, bias: true, acc: true, head: false },
      { rows: 33, inDim: 48, outDim: 6100, bias: false, acc: false, head: false },
      { rows: 50, inDim: 72, outDim: 6080, bias: false, acc: false, head: true, headRows: 40 },
    ];
    for (const c of cases) {
      const wBits = new Uint16Array(c.outDim * c.inDim);
      const wVal = new Float32Array(wBits.length);
      wBits.forEach((_, i) => ([wBits[i], wVal[i]] = bf16(rand())));
      const bBits = new Uint16Array(c.outDim + (c.outDim % 2));
      const bVal = new Float32Array(c.outDim);
      for (let o = 0; o < c.outDim; o++) [bBits[o], bVal[o]] = bf16(rand());
      const x = Float32Array.from({ length: c.rows * c.inDim }, rand);
      const y0 = Float32Array.from({ length: c.rows * c.outDim }, rand);
      const headRow0 = c.head ? 2 : 0;
      const headRows = c.head ? (c.headRows ?? 3) : 0;
      const rows = c.head ? headRows : c.rows;
      const want = new Float32Array(y0);
      for (let r = 0; r < rows; r++) {
        for (let o = 0; o < c.outDim; o++) {
          let v = c.bias ? bVal[o]! : 0;
          for (let i = 0; i < c.inDim; i++) v += wVal[o * c.inDim + i]! * x[r * c.inDim + i]!;
          want[r * c.outDim + o] = c.acc ? y0[r * c.outDim + o]! + v : v;
        }
      }
      for (const reference of [true, false]) {
        const put = (a: ArrayBufferView<ArrayBuffer>) => {
          const b = memory.alloc("in", a.byteLength, S, "activations");
          device.queue.writeBuffer(b.buffer, 0, a);
          return b;
        };
        const [w, b, xb, yb] = [put(wBits), put(bBits), put(x), put(new Float32Array(y0))];
        ctx.params.reset();
        const o = { inDim: c.inDim, outDim: c.outDim, reference };
        const d = await matmul(ctx, {
          label: "mm",
          weight: w!.buffer,
          bias: c.bias ? b!.buffer : undefined,
          x: xb!.buffer,
          y: yb!.buffer,
          accumulate: c.acc,
          headRows: c.head,
          ...o,
        });
        const shape = { t: c.rows, headRows, pos0: 0 };
        device.queue.writeBuffer(step.buffer, 0, packStep(shape, headRow0));
        const got = new Float32Array(await runAndRead(device, d, shape, yb!.buffer, yb!.size));
        let err = 0;
        for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
        const path = tiledApplies(o) && tiledRuns(o, rows) ? "tiled" : fastPathApplies(o) ? "gemv8" : "main";
        // the cases of 33 rows or more are there for the tiled kernel (48 workgroups at least)
        if (rows >= 33 && !reference) assert.equal(path, "tiled", JSON.stringify(c));
        assert.ok(err < 1e-4, `${JSON.stringify(c)} ${path}: max error ${err}`);
        for (const t of [w, b, xb, yb]) memory.free(t);
      }
    }
  } finally {
    memory.freeAll();
    device.destroy();
  }
});

Deno.test("matmul: the vectorised kernel's fused RMSNorm equals a CPU norm then GEMM, and writes the normalised rows", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  try {
    const rand = rng(7);
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const put = (a: ArrayBufferView<ArrayBuffer>) => {
      const b = memory.alloc("in", a.byteLength, S, "activations");
      device.queue.writeBuffer(b.buffer, 0, a);
      return b.buffer;
    };
    const eps = 1e-5;
    // rows past a tile of 4 and a partial last tile; x's rows wider and narrower than 4 · WG values
    for (
      const c of [{ rows: 1, inDim: 2048, outDim: 37, bias: true }, {
        rows: 6,
        inDim: 72,
        outDim: 130,
        bias: false,
      }]
    ) {
      const wBits = new Uint16Array(c.outDim * c.inDim);
      const wVal = new Float32Array(wBits.length);
      wBits.forEach((_, i) => ([wBits[i], wVal[i]] = bf16(rand())));
      const gBits = new Uint16Array(c.inDim);
      const gVal = new Float32Array(c.inDim);
      gBits.forEach((_, i) => ([gBits[i], gVal[i]] = bf16(1 + rand())));
      const bBits = new Uint16Array(c.outDim + (c.outDim % 2));
      const bVal = new Float32Array(c.outDim);
      for (let o = 0; o < c.outDim; o++) [bBits[o], bVal[o]] = bf16(rand());
      const x = Float32Array.from({ length: c.rows * c.inDim }, () => 5 * rand());
      const want = new Float32Array(c.rows * c.outDim);
      const wantXn = new Float32Array(c.rows * c.inDim);
      for (let r = 0; r < c.rows; r++) {
        let ss = 0;
        for (let i = 0; i < c.inDim; i++) ss += x[r * c.inDim + i]! ** 2;
        const inv = 1 / Math.sqrt(ss / c.inDim + eps);
        for (let i = 0; i < c.inDim; i++) wantXn[r * c.inDim + i] = x[r * c.inDim + i]! * inv * gVal[i]!;
        for (let o = 0; o < c.outDim; o++) {
          let v = c.bias ? bVal[o]! : 0;
          for (let i = 0; i < c.inDim; i++) {
            v += wVal[o * c.inDim + i]! * x[r * c.inDim + i]! * inv * gVal[i]!;
          }
          want[r * c.outDim + o] = v;
        }
      }
      for (const writeXn of [false, true]) {
        const y = put(new Float32Array(want.length));
        const xn = put(new Float32Array(wantXn.length));
        ctx.params.reset();
        const d = await matmul(ctx, {
          label: "norm_mm",
          weight: put(wBits),
          bias: c.bias ? put(bBits) : undefined,
          x: put(x),
          y,
          inDim: c.inDim,
          outDim: c.outDim,
          norm: { weight: put(gBits), eps, out: writeXn ? xn : undefined },
        });
        const shape = { t: c.rows, headRows: 0, pos0: 0 };
        device.queue.writeBuffer(step.buffer, 0, packStep(shape, 0));
        const got = new Float32Array(await runAndRead(device, d, shape, y));
        let err = 0;
        for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
        assert.ok(err < 1e-4, `${JSON.stringify(c)} xn ${writeXn}: max error ${err}`);
        const gotXn = new Float32Array(await runAndRead(device, [], shape, xn));
        let xnErr = 0;
        for (let i = 0; i < wantXn.length; i++) {
          xnErr = Math.max(xnErr, Math.abs(gotXn[i]! - (writeXn ? wantXn[i]! : 0)));
        }
        assert.ok(xnErr < 1e-5, `${JSON.stringify(c)} xn ${writeXn}: normalised rows' max error ${xnErr}`);
      }
    }
    const tiny = {
      weight: put(new Uint16Array(4)),
      x: put(new Float32Array(2)),
      y: put(new Float32Array(2)),
    };
    await assert.rejects(
      () => matmul(ctx, { ...tiny, label: "odd", inDim: 2, outDim: 2, norm: { weight: tiny.weight, eps } }),
      /needs the fast path/,
    );
  } finally {
    memory.freeAll();
    device.destroy();
  }
});

Deno.test("matmul: SwiGLU's gate and up in one GEMV, and a down projection with a sigmoid gate, equal a CPU reference", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  try {
    const rand = rng(11);
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const put = (a: ArrayBufferView<ArrayBuffer>) => {
      const b = memory.alloc("in", a.byteLength, S, "activations");
      device.queue.writeBuffer(b.buffer, 0, a);
      return b.buffer;
    };
    const matrix = (n: number) => {
      const bits = new Uint16Array(n + (n % 2));
      const val = new Float32Array(n);
      for (let i = 0; i < n; i++) [bits[i], val[i]] = bf16(rand());
      return { bits, val };
    };
    const dot = (w: Float32Array, o: number, x: Float32Array, r: number, n: number) => {
      let v = 0;
      for (let i = 0; i < n; i++) v += w[o * n + i]! * x[r * n + i]!;
      return v;
    };
    // a partial last tile of rows, outputs not a multiple of the workgroup's 4, x wider than 8 · WG
    for (const c of [{ rows: 1, inDim: 2048, outDim: 37 }, { rows: 6, inDim: 72, outDim: 130 }]) {
      const [g, u] = [matrix(c.outDim * c.inDim), matrix(c.outDim * c.inDim)];
      const x = Float32Array.from({ length: c.rows * c.inDim }, () => 2 * rand());
      const want = new Float32Array(c.rows * c.outDim);
      for (let r = 0; r < c.rows; r++) {
        for (let o = 0; o < c.outDim; o++) {
          const a = dot(g.val, o, x, r, c.inDim);
          want[r * c.outDim + o] = a / (1 + Math.exp(-a)) * dot(u.val, o, x, r, c.inDim);
        }
      }
      const y = put(new Float32Array(want.length));
      ctx.params.reset();
      const d = await matmul(ctx, {
        label: "glu",
        weight: put(g.bits),
        glu: { weight: put(u.bits) },
        x: put(x),
        y,
        inDim: c.inDim,
        outDim: c.outDim,
      });
      const shape = { t: c.rows, headRows: 0, pos0: 0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape, 0));
      const got = new Float32Array(await runAndRead(device, d, shape, y));
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
      assert.ok(err < 1e-4, `glu ${JSON.stringify(c)}: max error ${err}`);
    }
    // y += σ(xn · g) · (W · x), added into y (Qwen2-MoE's gated shared expert), gate inputs wider and
    // narrower than 8 · WG values
    for (
      const c of [{ rows: 1, inDim: 48, outDim: 2048, dim: 2048 }, {
        rows: 5,
        inDim: 136,
        outDim: 19,
        dim: 72,
      }]
    ) {
      const w = matrix(c.outDim * c.inDim);
      const gate = matrix(c.dim);
      const x = Float32Array.from({ length: c.rows * c.inDim }, rand);
      const xn = Float32Array.from({ length: c.rows * c.dim }, () => 0.2 * rand());
      const y0 = Float32Array.from({ length: c.rows * c.outDim }, rand);
      const want = new Float32Array(y0);
      for (let r = 0; r < c.rows; r++) {
        const sigma = 1 / (1 + Math.exp(-dot(gate.val, 0, xn, r, c.dim)));
        for (let o = 0; o < c.outDim; o++) want[r * c.outDim + o]! += sigma * dot(w.val, o, x, r, c.inDim);
      }
      const y = put(new Float32Array(y0));
      ctx.params.reset();
      const d = await matmul(ctx, {
        label: "gated",
        weight: put(w.bits),
        x: put(x),
        y,
        inDim: c.inDim,
        outDim: c.outDim,
        accumulate: true,
        gate: { weight: put(gate.bits), x: put(xn), dim: c.dim },
      });
      const shape = { t: c.rows, headRows: 0, pos0: 0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape, 0));
      const got = new Float32Array(await runAndRead(device, d, shape, y));
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
      assert.ok(err < 1e-4, `gate ${JSON.stringify(c)}: max error ${err}`);
    }
    const tiny = {
      weight: put(new Uint16Array(64)),
      x: put(new Float32Array(8)),
      y: put(new Float32Array(8)),
    };
    await assert.rejects(
      () =>
        matmul(ctx, {
          ...tiny,
          label: "both",
          inDim: 8,
          outDim: 8,
          glu: { weight: tiny.weight },
          gate: { weight: tiny.weight, x: tiny.x, dim: 8 },
        }),
      /one at a time/,
    );
    await assert.rejects(
      () =>
        matmul(ctx, {
          ...tiny,
          label: "narrow",
          inDim: 8,
          outDim: 8,
          gate: { weight: tiny.weight, x: tiny.x, dim: 12 },
        }),
      /multiple of 8/,
    );
  } finally {
    memory.freeAll();
    device.destroy();
  }
});
