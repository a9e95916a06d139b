/** RMSNorm (shaders/norm.wgsl) against a CPU reference: into another buffer and in place, narrow and wide rows. */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { kernelContext } from "../gpu/dispatch.ts";
import { rmsNorm } from "./norm.ts";
import { packStep } from "./step.ts";
import { runAndRead } from "../../tests/support/gpu_read.ts";
import { bf16, rng } from "../../tests/support/random.ts";

Deno.test("rmsNorm: main and in_place equal a CPU RMSNorm, rows narrower and wider than a workgroup", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  try {
    const rand = rng(5);
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    for (const c of [{ rows: 3, cols: 72 }, { rows: 2, cols: 2048 }, { rows: 5, cols: 130 }]) {
      const wBits = new Uint16Array(c.cols);
      const wVal = new Float32Array(c.cols);
      wBits.forEach((_, i) => ([wBits[i], wVal[i]] = bf16(1 + rand())));
      const x = Float32Array.from({ length: c.rows * c.cols }, () => 3 * rand());
      const eps = 1e-5;
      const want = new Float32Array(x.length);
      for (let r = 0; r < c.rows; r++) {
        let ss = 0;
        for (let i = 0; i < c.cols; i++) ss += x[r * c.cols + i]! ** 2;
        const inv = 1 / Math.sqrt(ss / c.cols + eps);
        for (let i = 0; i < c.cols; i++) want[r * c.cols + i] = x[r * c.cols + i]! * inv * wVal[i]!;
      }
      for (const inPlace of [false, true]) {
        const put = (a: ArrayBufferView<ArrayBuffer>) => {
          const b = memory.alloc("in", a.byteLength, S, "activations");
          device.queue.writeBuffer(b.buffer, 0, a);
          return b;
        };
        const [w, xb, yb] = [put(wBits), put(x), put(inPlace ? x : new Float32Array(x.length))];
        ctx.params.reset();
        const d = await rmsNorm(ctx, {
          label: "norm",
          weight: w!.buffer,
          x: inPlace ? undefined : xb!.buffer,
          y: yb!.buffer,
          cols: c.cols,
          eps,
        });
        const shape = { t: c.rows, headRows: 0, pos0: 0 };
        device.queue.writeBuffer(step.buffer, 0, packStep(shape, 0));
        const got = new Float32Array(await runAndRead(device, [d], shape, yb!.buffer, x.byteLength));
        let err = 0;
        for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
        assert.ok(err < 1e-5, `${JSON.stringify(c)} ${inPlace ? "in_place" : "main"}: max error ${err}`);
        for (const t of [w, xb, yb]) memory.free(t);
      }
    }
  } finally {
    memory.freeAll();
    device.destroy();
  }
});
