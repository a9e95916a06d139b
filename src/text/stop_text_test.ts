import assert from "node:assert/strict";
import { StopText } from "./stop_text.ts";

/** Appends `parts` one by one, taking after each; the pieces taken and whether it stopped. */
function run(stop: string[], parts: string[]): { pieces: string[]; stopped: boolean } {
  const t = new StopText(stop);
  const pieces: string[] = [];
  for (const p of parts) {
    t.append(p);
    pieces.push(t.take());
    if (t.stopped) break;
  }
  pieces.push(t.take(true));
  return { pieces, stopped: t.stopped };
}

Deno.test("stop text: cut at a stop string split over appends; nothing of it is taken first", () => {
  const { pieces, stopped } = run(["END"], ["one E", "N", "D two"]);
  assert.equal(stopped, true);
  assert.equal(pieces.join(""), "one ");
  // held back while "E" and "EN" could begin "END"
  assert.deepEqual(pieces, ["one ", "", "", ""]);
});

Deno.test("stop text: the earliest of several stop strings wins, wherever each ends", () => {
  assert.equal(run(["cd", "b"], ["abcd"]).pieces.join(""), "a");
  assert.equal(run(["xyz", "yz"], ["wx", "yz!"]).pieces.join(""), "w");
});

Deno.test("stop text: a false start is handed out once the text shows it is not a stop string", () => {
  const { pieces, stopped } = run(["END"], ["a EN", "d b", "c"]);
  assert.equal(stopped, false);
  assert.deepEqual(pieces, ["a ", "ENd b", "c", ""]);
});

Deno.test("stop text: no stop strings hold nothing back; after stopping nothing is appended", () => {
  assert.deepEqual(run([], ["a", "b"]).pieces, ["a", "b", ""]);
  const t = new StopText(["b"]);
  assert.equal(t.append("ab"), true);
  assert.equal(t.append("c"), true);
  assert.equal(t.take(), "a");
  assert.equal(t.take(true), "");
});

Deno.test("stop text: against a brute force, on random text and stop strings over two letters", () => {
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const word = (n: number) => Array.from({ length: n }, () => "ab"[rand(2)]).join("");
  for (let trial = 0; trial < 500; trial++) {
    const stops = Array.from({ length: 1 + rand(3) }, () => word(1 + rand(5)));
    const t = new StopText(stops);
    let text = "", taken = "";
    for (let part = 0; part < 8; part++) {
      const more = word(rand(4));
      text += more;
      // the earliest stop string in the whole text: none was there before this part
      const hits = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
      assert.equal(t.append(more), hits.length > 0);
      if (hits.length > 0) text = text.slice(0, Math.min(...hits));
      // the longest end of the text that begins a stop string is all that is held back
      const held = hits.length > 0 ? 0 : Math.max(
        0,
        ...stops.flatMap((s) => [...Array(s.length).keys()].filter((k) => text.endsWith(s.slice(0, k)))),
      );
      taken += t.take();
      assert.equal(taken, text.slice(0, text.length - held), `stops ${stops}, text ${text}`);
      if (hits.length > 0) break;
    }
  }
});

Deno.test("stop text: a stop string of a million characters costs no more than its length per append", () => {
  const long = "a".repeat(1_000_000) + "b";
  const t = new StopText([long]);
  const started = performance.now();
  for (let i = 0; i < 1000; i++) t.append("a".repeat(1000));
  assert.equal(t.take(), ""); // all of it could begin the stop string
  t.append("b");
  assert.equal(t.stopped, true);
  assert.equal(t.take(true), "");
  assert.ok(performance.now() - started < 5000, `${performance.now() - started} ms`);
});
