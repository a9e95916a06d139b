import assert from "node:assert/strict";
import { UploadPacer } from "./upload_pacer.ts";

const MB = 1e6;

Deno.test("pacer: until a batch of enough steps is timed, a step earns its assumed 2 ms", () => {
  const p = new UploadPacer({ initialRate: 4e9, initialStepSeconds: 0.002 });
  assert.equal(p.step(84 * 2 ** 20), 8e6);
  // a 2-step batch: its readback latency would dominate, so it does not count
  p.observeBatch({ steps: 2, wallSeconds: 0.02, cpuSeconds: 0.002, uploadSeconds: 0 });
  assert.equal(p.perStep, 8e6);
  assert.equal(p.step(84 * 2 ** 20), 16e6);
});

Deno.test("pacer: a step earns half its slack plus 2 % of its time, at the measured rate", () => {
  const p = new UploadPacer({ initialRate: 8e9 });
  // 16 steps: GPU 4 ms each, the CPU's own work 1.5 ms each (its 0.5 ms of uploads left out)
  p.observeBatch({ steps: 16, wallSeconds: 0.064, cpuSeconds: 0.032, uploadSeconds: 0.008 });
  assert.ok(Math.abs(p.slackSeconds - 0.0025) < 1e-12);
  const expected = (0.5 * 0.0025 + 0.02 * 0.004) * 8e9; // 10.64 MB
  assert.ok(Math.abs(p.perStep - expected) < 1);
  assert.ok(Math.abs(p.step(12.6 * MB) - expected) < 1);
});

Deno.test("pacer: a copy larger than a step's credit waits for the steps that earn it", () => {
  const p = new UploadPacer({ initialRate: 8e9, slackShare: 0.5, wallShare: 0 });
  // 4 ms of slack a step at 8 GB/s, half of it: 16 MB a step; an 88 MB expert needs 6 steps
  p.observeBatch({ steps: 16, wallSeconds: 0.096, cpuSeconds: 0.032, uploadSeconds: 0 });
  let steps = 0;
  while (p.step(88 * MB) < 88 * MB) steps++;
  assert.equal(steps, 5); // the sixth step's credit covers it
  p.spend(88 * MB);
  assert.ok(p.credit < 16 * MB);
});

Deno.test("pacer: credit saved while nothing waits stays within the bank", () => {
  const p = new UploadPacer({ initialRate: 1e9, wallShare: 0, bankSteps: 8 });
  p.observeBatch({ steps: 8, wallSeconds: 0.08, cpuSeconds: 0.04, uploadSeconds: 0 }); // slack 5 ms
  for (let i = 0; i < 100; i++) p.step(0);
  assert.ok(Math.abs(p.credit - 8 * p.perStep) < 1);
  p.reset();
  assert.equal(p.credit, 0);
});

Deno.test("pacer: no slack (the CPU is the bottleneck) still earns the wall share", () => {
  const p = new UploadPacer({ initialRate: 2e9 });
  // a software adapter: submit runs the work, so the CPU's time is the step's
  p.observeBatch({ steps: 4, wallSeconds: 0.4, cpuSeconds: 0.4, uploadSeconds: 0 });
  assert.equal(p.slackSeconds, 0);
  assert.ok(Math.abs(p.perStep - 0.02 * 0.1 * 2e9) < 1);
});

Deno.test("pacer: uploads while CPU-bound shrink the slack they were granted", () => {
  const p = new UploadPacer({ initialRate: 8e9, wallShare: 0 });
  // first the GPU is the bottleneck: 3 ms of slack
  p.observeBatch({ steps: 16, wallSeconds: 0.064, cpuSeconds: 0.016, uploadSeconds: 0 });
  const before = p.slackSeconds;
  // then uploads made the CPU the bottleneck: the wall is the CPU's time, uploads and all
  for (let i = 0; i < 20; i++) {
    p.observeBatch({ steps: 16, wallSeconds: 0.1, cpuSeconds: 0.1, uploadSeconds: 0.04 });
  }
  // what is left is the slack the uploads themselves filled (2.5 ms a step), not more
  assert.ok(p.slackSeconds < before);
  assert.ok(Math.abs(p.slackSeconds - 0.0025) < 1e-4);
});

Deno.test("pacer: the rate follows measured uploads of a MiB or more", () => {
  const p = new UploadPacer({ initialRate: 4e9 });
  p.observeUpload(100_000, 1e-6); // too small to time
  assert.equal(p.rate, 4e9);
  for (let i = 0; i < 40; i++) p.observeUpload(12 * MB, 12 * MB / 8e9);
  assert.ok(Math.abs(p.rate - 8e9) / 8e9 < 1e-3);
});
