/**
 * The CLI's progress lines: load progress in bytes with rate and time left (steps when the engine
 * reports no bytes), and step progress with time left, redrawn on a terminal and as plain lines every
 * ten seconds elsewhere. A fake clock and a fake stderr make them exact.
 */
import assert from "node:assert/strict";
import {
  bar,
  formatDuration,
  loadLine,
  loadProgress,
  PLAIN_EVERY_MS,
  type ProgressOutput,
  stepProgress,
  timeLeft,
} from "../src/cli/progress.ts";

/** A stderr that records what is written, and a clock set by hand. */
function fakes(isTerminal: boolean) {
  const written: string[] = [];
  const out: ProgressOutput = { write: (t) => written.push(t), isTerminal };
  const clock = { ms: 0 };
  return { written, out, clock, now: () => clock.ms };
}

Deno.test("formatDuration and timeLeft", () => {
  assert.equal(formatDuration(8.25), "8.3 s");
  assert.equal(formatDuration(42.4), "42 s");
  assert.equal(formatDuration(185), "3 min 05 s");
  assert.equal(formatDuration(3720), "1 h 02 min");
  assert.equal(formatDuration(Infinity), "?");
  assert.equal(timeLeft(1, 4, 10), 30);
  assert.equal(timeLeft(4, 4, 10), 0);
  assert.equal(timeLeft(0, 4, 10), undefined, "no rate before the first step");
  assert.equal(bar(0.5, 4), "[██░░]");
  assert.equal(bar(2, 2), "[██]", "clamped");
});

Deno.test("load line: bytes with rate and time left when reported, else steps", () => {
  const MiB = 2 ** 20;
  const since = { ms: 0, bytes: 0 };
  const p = { stage: "experts" as const, done: 10, total: 64, bytes: 4 * MiB, totalBytes: 12 * MiB };
  // 4 MiB in 2 s: 2 MiB/s, 8 MiB left: 4 s
  assert.equal(
    loadLine(p, since, 2000),
    `Uploading experts  ${bar(1 / 3)} 4.0 MiB / 12.0 MiB · 2.0 MiB/s · 4.0 s left`,
  );
  assert.equal(
    loadLine({ stage: "weights", done: 3, total: 12 }, since, 2000),
    `Uploading weights  ${bar(0.25)} 3/12`,
  );
  // no rate from a zero interval
  assert.equal(loadLine(p, since, 0), `Uploading experts  ${bar(1 / 3)} 4.0 MiB / 12.0 MiB`);
});

Deno.test("load progress: redrawn on a terminal and cleared at the end; silent elsewhere", () => {
  const t = fakes(true);
  const bar = loadProgress(t.out, t.now);
  bar.onProgress({ stage: "config", done: 0, total: 1 });
  t.clock.ms = 50;
  bar.onProgress({ stage: "weights", done: 1, total: 4 }); // a new stage: drawn at once
  t.clock.ms = 60;
  bar.onProgress({ stage: "weights", done: 2, total: 4 }); // within 100 ms: skipped
  t.clock.ms = 200;
  bar.onProgress({ stage: "weights", done: 4, total: 4 });
  bar.done();
  assert.equal(t.written.length, 4);
  assert.ok(t.written[1]!.startsWith("\r\x1b[KUploading weights "), JSON.stringify(t.written[1]));
  assert.match(t.written[1]!, / 1\/4$/);
  assert.match(t.written[2]!, / 4\/4$/);
  assert.equal(t.written[3], "\r\x1b[K");

  const plain = fakes(false);
  const quiet = loadProgress(plain.out, plain.now);
  quiet.onProgress({ stage: "weights", done: 1, total: 4 });
  quiet.done();
  assert.deepEqual(plain.written, []);
});

Deno.test("step progress: plain lines every ten seconds with the time left when not a terminal", () => {
  const t = fakes(false);
  const p = stepProgress("window", 10, t.out, t.now);
  for (let i = 0; i < 10; i++) {
    t.clock.ms = (i + 1) * 4000; // 4 s a window
    p.step(i, `perplexity ${i}`);
  }
  p.done();
  // at 12 s (window 3), 24 s (window 6), 36 s (window 9), and the last
  assert.deepEqual(t.written, [
    "window 3/10 · perplexity 2 · 12 s, 28 s left\n",
    "window 6/10 · perplexity 5 · 24 s, 16 s left\n",
    "window 9/10 · perplexity 8 · 36 s, 4.0 s left\n",
    "window 10/10 · perplexity 9 · 40 s\n",
  ]);
  assert.ok(PLAIN_EVERY_MS === 10_000);

  // a short run prints nothing
  const short = fakes(false);
  const q = stepProgress("window", 2, short.out, short.now);
  short.clock.ms = 1000;
  q.step(0);
  short.clock.ms = 2000;
  q.step(1);
  assert.deepEqual(short.written, []);
});

Deno.test("step progress: one line redrawn on a terminal, cleared at the end", () => {
  const t = fakes(true);
  const p = stepProgress("window", 4, t.out, t.now);
  t.clock.ms = 5000;
  p.step(0);
  p.done();
  assert.deepEqual(t.written, ["\r\x1b[Kwindow 1/4 · 5.0 s, 15 s left", "\r\x1b[K"]);
});
