/**
 * `deno bench` for quantizing experts on the CPU (src/quant/formats.ts), the work of a first load at
 * int8 or int4: one OLMoE-1B-7B expert matrix, [1024, 2048] bf16 (4 MiB), per iteration, on one
 * thread (the engine spreads experts over up to 8 workers).
 *
 *   deno bench -A bench/quant_bench.ts
 *
 * @module
 */
import { quantizeMatrix } from "../src/quant/formats.ts";

const [rows, cols] = [1024, 2048];
const bf16 = new Uint8Array(rows * cols * 2);
{
  // seeded values of a trained expert's spread: bf16 of N(0, 0.02)-like numbers
  const bits = new Uint16Array(bf16.buffer);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  let seed = 1;
  for (let i = 0; i < bits.length; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    f[0] = ((seed / 2 ** 31) * 2 - 1) * 0.04;
    bits[i] = u[0]! >>> 16;
  }
}

for (const p of ["int8", "int4"] as const) {
  Deno.bench({ name: `quantize ${p}: [1024, 2048] bf16 (4 MiB)`, group: p, warmup: 50, n: 50 }, () => {
    quantizeMatrix(p, bf16, rows, cols);
  });
}
