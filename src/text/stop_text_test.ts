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
