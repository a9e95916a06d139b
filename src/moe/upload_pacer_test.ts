import assert from "node:assert/strict";
import { type BatchTiming, UploadPacer } from "./upload_pacer.ts";

const MiB = 2 ** 20;

/** A decode batch (16 steps, one sequence unless `o` says), `ms` milliseconds a step, uploads taking `upload` s. */
function batch(ms: number, upload = 0, o: Partial<BatchTiming> = {}): BatchTiming {
  const steps = o.steps ?? 16;
  const wallSeconds = steps * ms / 1000;
  return { steps, sequences: 1, prefill: false, probe: false, wallSeconds, uploadSeconds: upload, ...o };
}

Deno.test("pacer: before a baseline, a step earns its assumed 2 ms; a measurable batch then probes", () => {
  const p = new UploadPacer({ initialRate: 4e9, initialStepSeconds: 0.002 });
  p.beginBatch(1, 1); // too short to measure: uploads go on
  assert.equal(p.probing, false);
  assert.equal(p.step(84 * MiB), 8e6);
  assert.equal(p.step(84 * MiB), 16e6);
  p.beginBatch(8, 1); // shorter than a probe: a short generation swaps from its first steps
  assert.equal(p.probing, false);
  p.beginBatch(16, 1); // the first 16-step batch measures the steps without uploads
  assert.equal(p.probing, true);
  assert.equal(p.step(84 * MiB), 0);
  assert.equal(p.credit, 16e6); // what was saved stays
  p.beginBatch(16, 1); // a probe is two batches: the second's CPU time is in the first's wall
  assert.equal(p.probing, true);
  p.beginBatch(16, 1); // submitted before the probe is read: no second probe, the assumed 2 ms
  assert.equal(p.probing, false);
  assert.equal(p.step(84 * MiB), 24e6);
  p.observeBatch(batch(4, 0, { steps: 16 }));
  assert.ok(Math.abs(p.baseline(1)! - 0.004) < 1e-12);
  p.beginBatch(16, 1);
  assert.equal(p.probing, false);
  assert.ok(Math.abs(p.perStep - 0.1 * 0.004 * 4e9) < 1); // the initial share of the step's time
});

Deno.test("pacer: batches within the tolerance raise the share, a slower one halves it", () => {
  const p = new UploadPacer({
    initialRate: 8e9,
    initialShare: 0.1,
    maxShare: 0.5,
    tolerance: 0.04,
    probeEvery: 100,
  });
  p.observeBatch(batch(4)); // baseline 4 ms
  p.observeBatch(batch(4.1, 0.01)); // +2.5 %: within
  assert.ok(Math.abs(p.share - (0.1 + 0.5 / 16)) < 1e-12);
  for (let i = 0; i < 40; i++) p.observeBatch(batch(4.1, 0.01));
  assert.equal(p.share, 0.5); // at the ceiling
  p.observeBatch(batch(4.4, 0.02)); // +10 %
  assert.equal(p.share, 0.25);
  for (let i = 0; i < 20; i++) p.observeBatch(batch(5, 0.05));
  assert.equal(p.share, 0.01); // at the floor: uploads slow down, they never stop
  p.beginBatch(16, 1);
  assert.ok(p.perStep > 0);
});

Deno.test("pacer: a copy larger than a step's credit waits for the steps that earn it", () => {
  const p = new UploadPacer({ initialRate: 8e9, initialShare: 0.5 });
  p.observeBatch(batch(4)); // 0.5 · 4 ms · 8 GB/s = 16 MB a step
  p.beginBatch(16, 1);
  let steps = 0;
  while (p.step(88e6) < 88e6) steps++;
  assert.equal(steps, 5); // the sixth step's credit covers it
  p.spend(88e6);
  assert.ok(p.credit < 16e6);
});

Deno.test("pacer: credit saved while nothing waits stays within the bank", () => {
  const p = new UploadPacer({ initialRate: 1e9, bankSteps: 8 });
  p.observeBatch(batch(10));
  p.beginBatch(16, 1);
  for (let i = 0; i < 100; i++) p.step(0);
  assert.ok(Math.abs(p.credit - 8 * p.perStep) < 1);
  p.reset();
  assert.equal(p.credit, 0);
});

Deno.test("pacer: baselines are kept per number of sequences, and measured again when old", () => {
  const p = new UploadPacer({ probeEvery: 3 });
  p.observeBatch(batch(4));
  p.observeBatch(batch(9, 0, { sequences: 8 }));
  assert.equal(p.baseline(1), 0.004);
  assert.equal(p.baseline(8), 0.009);
  p.beginBatch(16, 4); // no baseline for 4 sequences: a probe
  assert.equal(p.probing, true);
  p.beginBatch(16, 1);
  assert.equal(p.probing, false);
  for (let i = 0; i < 3; i++) p.observeBatch(batch(4.1, 0.01));
  p.beginBatch(16, 1); // three batches with uploads since the baseline: measure it again
  assert.equal(p.probing, true);
  p.beginBatch(16, 1);
  assert.equal(p.probing, true);
  p.observeBatch(batch(5));
  assert.ok(Math.abs(p.baseline(1)! - (0.7 * 0.004 + 0.3 * 0.005)) < 1e-12);
  p.beginBatch(16, 1);
  assert.equal(p.probing, false);
});

Deno.test("pacer: short batches, prefill steps and unknown sequences do not move the estimates", () => {
  const p = new UploadPacer();
  p.observeBatch(batch(40, 0, { prefill: true }));
  p.observeBatch(batch(4, 0, { steps: 2 }));
  assert.equal(p.baseline(1), undefined);
  const share = p.share;
  p.observeBatch(batch(8, 0.01)); // uploads, but no baseline to compare with
  assert.equal(p.share, share);
});

Deno.test("pacer: the rate follows measured uploads of a MiB or more", () => {
  const p = new UploadPacer({ initialRate: 4e9 });
  p.observeUpload(100_000, 1e-6); // too small to time
  assert.equal(p.rate, 4e9);
  for (let i = 0; i < 40; i++) p.observeUpload(12e6, 12e6 / 8e9);
  assert.ok(Math.abs(p.rate - 8e9) / 8e9 < 1e-3);
});

Deno.test("pacer: a batch of prompts alone neither probes nor changes what a decode step earns", () => {
  const p = new UploadPacer({ initialRate: 8e9, initialShare: 0.25 });
  p.observeBatch(batch(4));
  p.beginBatch(16, 1);
  const per = p.perStep;
  p.beginBatch(8, 0);
  assert.equal(p.probing, false);
  assert.equal(p.perStep, per);
});

Deno.test("pacer: a probe cut short by the end of its generation does not block the next probe", () => {
  const p = new UploadPacer();
  // a generation ends one step into its 16-step batch, a probe
  assert.equal(p.beginBatch(16, 1), true);
  p.observeBatch(batch(4, 0, { steps: 1, probe: true }));
  assert.equal(p.baseline(1), undefined);
  // the next generation: its second probe batch (left over) and then a probe of its own
  assert.equal(p.beginBatch(16, 1), true);
  p.observeBatch(batch(4, 0, { steps: 1, probe: true }));
  assert.equal(p.beginBatch(16, 1), true);
  p.observeBatch(batch(4, 0, { steps: 16, probe: true }));
  assert.equal(p.baseline(1), 0.004);
});

Deno.test("pacer: a batch that uploaded and ran faster than the baseline lowers it (a probe that met a slow spell)", () => {
  // as one H200 run measured: a probe at 5.18 ms a step where steps without uploads take 3.6 ms
  const p = new UploadPacer({ initialShare: 0.1, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  p.observeBatch(batch(5.18));
  // uploads cost these steps 11 %: against 5.18 ms they looked free, and the share would only grow
  p.observeBatch(batch(4.0, 0.004));
  assert.ok(Math.abs(p.baseline(1)! - 0.004) < 1e-12);
  const share = p.share;
  p.observeBatch(batch(4.3, 0.006)); // +7.5 % over the lowered baseline: halved
  assert.equal(p.share, share / 2);
  // slower batches that uploaded never raise it; the next probe measures it again
  assert.ok(Math.abs(p.baseline(1)! - 0.004) < 1e-12);
  p.observeBatch(batch(3.6));
  assert.ok(Math.abs(p.baseline(1)! - (0.7 * 0.004 + 0.3 * 0.0036)) < 1e-12);
});

/** A decode batch timed on the GPU's clock: `busy` ms of a step's pass, `idle` ms waiting before it. */
function gpuBatch(busy: number, idle: number, upload = 0, o: Partial<BatchTiming> = {}): BatchTiming {
  const steps = o.steps ?? 16;
  return batch(busy + idle, upload, { busySeconds: steps * busy / 1000, ...o });
}

Deno.test("pacer: on the GPU's clock, passes that ran slower are not charged to the uploads", () => {
  const p = new UploadPacer({ initialShare: 0.1, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  p.observeBatch(gpuBatch(2.7, 0.02)); // the probe: 2.72 ms a step, 0.02 of them waiting
  assert.ok(Math.abs(p.baseline(1)! - 0.00272) < 1e-12);
  assert.ok(Math.abs(p.baselineIdle(1)! - 0.00002) < 1e-12);
  // the GPU's clocks dip: passes 8 % slower, the waiting as before; the share grows
  p.observeBatch(gpuBatch(2.92, 0.03, 0.001));
  assert.equal(p.share, 0.1 + 0.5 / 16);
  // on the host's clock (no busy time) the same batch is over the tolerance
  const q = new UploadPacer({ initialShare: 0.1, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  q.observeBatch(batch(2.72));
  q.observeBatch(batch(2.95, 0.001));
  assert.equal(q.share, 0.05);
});

Deno.test("pacer: on the GPU's clock, waiting beyond the baseline's past the tolerance halves the share", () => {
  const p = new UploadPacer({ initialShare: 0.2, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  p.observeBatch(gpuBatch(2.7, 0.02));
  // 0.1 ms more waiting a step: 3.6 % of a 2.72 ms step, within
  p.observeBatch(gpuBatch(2.7, 0.12, 0.002));
  assert.equal(p.share, 0.2 + 0.5 / 16);
  // 0.2 ms more, even on faster passes: 7 %, over
  const share = p.share;
  p.observeBatch(gpuBatch(2.5, 0.22, 0.004));
  assert.equal(p.share, share / 2);
  // a batch that uploaded and waited less than the probe lowers the baseline's waiting
  p.observeBatch(gpuBatch(2.7, 0.01, 0.001));
  assert.ok(Math.abs(p.baselineIdle(1)! - 0.00001) < 1e-12);
  // and the baseline's step is that waiting plus the passes' time, which batches lower: 2.70, then the
  // 2.5 ms batch mixed in at 0.3 (2.64); the passes of 2.7 ms, slower, leave it
  assert.ok(Math.abs(p.baseline(1)! - 0.00001 - 0.00264) < 1e-12, `${p.baseline(1)}`);
});

Deno.test("pacer: on the GPU's clock, a baseline probed on slow passes follows the batches' faster ones", () => {
  // an engine's first steps after the load: the probe's passes took 4.8 ms, the later ones 2.6 (H200)
  const p = new UploadPacer({ initialShare: 0.1, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  p.observeBatch(gpuBatch(4.8, 0.06));
  p.beginBatch(16, 1);
  assert.ok(Math.abs(p.perStep - 0.1 * 0.00486 * p.rate) < 1); // the share of the probe's 4.86 ms
  for (let i = 0; i < 12; i++) p.observeBatch(gpuBatch(2.6, 0.06, 0.001));
  // within 2 % of the passes' 2.6 ms plus the waiting (0.7¹² of the gap left): a step's credit is the
  // share of that, where the probes alone (every 100 batches here) would have kept 4.86 ms
  assert.ok(Math.abs(p.baseline(1)! - 0.00266) < 0.02 * 0.00266, `${p.baseline(1)}`);
  assert.ok(Math.abs(p.perStep - p.share * p.baseline(1)! * p.rate) < 1);
  // passes slower than the baseline's (the uploads' copies may share the memory) do not raise it
  const low = p.baseline(1)!;
  p.observeBatch(gpuBatch(3.2, 0.06, 0.001));
  assert.equal(p.baseline(1), low);
  // on the host's clock the same batches could not tell the passes from the waiting: they lower it at once
  const q = new UploadPacer({ initialShare: 0.1, maxShare: 0.5, tolerance: 0.04, probeEvery: 100 });
  q.observeBatch(batch(4.86));
  q.observeBatch(batch(2.66, 0.001));
  assert.ok(Math.abs(q.baseline(1)! - 0.00266) < 1e-12);
});
