/** How a step's rows become calls, without a GPU (the scheduler itself runs in tests/batch_test.ts). */
import assert from "node:assert/strict";
import { chunkRows, decodeRow, NO_GEN } from "../kernels/step.ts";
import { CALL_ROWS as ENGINE_CALL_ROWS, packCalls } from "./batch.ts";
import { GEMV_MAX_ROWS } from "../kernels/experts.ts";

/** The limit the cases are written for (the engine's is {@link ENGINE_CALL_ROWS}). */
const CALL_ROWS = 16;

const chunk = (slot: number, pos0: number, t: number, o: { sample?: boolean; count?: boolean } = {}) => ({
  rows: chunkRows(slot, pos0, t, o.sample ? 0 : undefined),
  ids: Array.from({ length: t }, (_, i) => 100 * slot + pos0 + i),
  count: o.count ?? true,
  newPass: pos0 === 0,
});

Deno.test("packCalls: the engine's calls stay within the expert kernels' GEMV path", () => {
  assert.equal(ENGINE_CALL_ROWS, GEMV_MAX_ROWS);
});

Deno.test("packCalls: decode rows and short chunks share calls of at most CALL_ROWS rows, samplers last", () => {
  const decode = [decodeRow(0, 40, 3), decodeRow(2, 9, 1), decodeRow(5, 300, 12)];
  const calls = packCalls(
    decode,
    [chunk(1, 0, 5, { sample: true }), chunk(3, 64, 6), chunk(4, 0, 10)],
    CALL_ROWS,
  );
  // 3 decode rows + 5 + 6 fit 16; the 10-row chunk takes a call of its own
  assert.deepEqual(calls.map((c) => c.rows.length), [14, 10]);
  const [a, b] = calls as [(typeof calls)[0], (typeof calls)[0]];
  // the head rows (decode rows and the sampling chunk's last row) close the call, in order
  assert.equal(a.heads, 4);
  assert.deepEqual(a.rows.slice(-4), [...decode, chunkRows(1, 0, 5, 0)[4]]);
  assert.ok(a.rows.slice(0, -4).every((r) => r.gen === NO_GEN));
  // every row keeps its own id; decode rows read theirs on the GPU (0 here)
  assert.deepEqual([...a.ids], [100, 101, 102, 103, 364, 365, 366, 367, 368, 369, 0, 0, 0, 104]);
  assert.equal(b.heads, 0);
  assert.deepEqual([...b.ids], Array.from({ length: 10 }, (_, i) => 400 + i));
  assert.ok(a.countStats && b.countStats && a.newPass && b.newPass);
});

Deno.test("packCalls: a chunk longer than CALL_ROWS, or rebuilding a cache, runs in a call of its own", () => {
  const long = chunk(0, 0, CALL_ROWS + 1, { sample: true });
  const rebuild = chunk(1, 0, 3, { count: false });
  const calls = packCalls([decodeRow(2, 7, 2)], [long, rebuild, chunk(3, 0, 2)], CALL_ROWS);
  assert.deepEqual(calls.map((c) => [c.rows.length, c.heads, c.countStats]), [
    [3, 1, true], // the decode row and the 2-row chunk
    [CALL_ROWS + 1, 1, true],
    [3, 0, false],
  ]);
  // more decode rows than a call holds: split, each call within CALL_ROWS
  const many = Array.from({ length: 2 * CALL_ROWS + 3 }, (_, s) => decodeRow(s, 5, 1));
  assert.deepEqual(packCalls(many, [], CALL_ROWS).map((c) => c.heads), [CALL_ROWS, CALL_ROWS, 3]);
  // a smaller limit (maxBatchTokens below CALL_ROWS) is kept too
  assert.deepEqual(packCalls(many.slice(0, 5), [chunk(9, 0, 4)], 4).map((c) => c.rows.length), [4, 1, 4]);
});
