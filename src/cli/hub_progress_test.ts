import assert from "node:assert/strict";
import { progressText, RateMeter } from "./hub_progress.ts";

Deno.test("RateMeter: bytes per second over the window, dropping older samples", () => {
  const m = new RateMeter(5000);
  assert.equal(m.rate(), 0, "no rate from nothing");
  m.add(0, 0);
  assert.equal(m.rate(), 0, "no rate from one sample");
  m.add(1000, 1_000_000);
  assert.equal(m.rate(), 1_000_000);
  // 10 s later at a tenth of the speed: the first samples fall out of the window
  for (let t = 2000; t <= 11_000; t += 1000) m.add(t, 1_000_000 + (t - 1000) * 100);
  assert.equal(m.rate(), 100_000);
});

Deno.test("progressText: bytes of the total, percent, rate and ETA", () => {
  const p = {
    repo: "o/n",
    commit: "0".repeat(40),
    file: "model.safetensors",
    fileIndex: 1,
    fileCount: 1,
    bytes: 3 * 2 ** 20,
    totalBytes: 10 * 2 ** 20,
    receivedBytes: 3 * 2 ** 20,
  };
  assert.equal(progressText(p, 2 ** 20), "3.0 MiB of 10.0 MiB (30%) · 1.0 MiB/s · ETA 7.0 s");
  assert.equal(progressText(p, 0), "3.0 MiB of 10.0 MiB (30%) · 0 B/s · ETA ?");
});
