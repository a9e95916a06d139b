/** The engine's lock without a GPU: arrival order, and handing the engine on once per release. */
import assert from "node:assert/strict";
import { EngineLock } from "./engine_lock.ts";

/** Lets timers and I/O run once (a turn of the event loop). */
const turn = () => new Promise((r) => setTimeout(r, 0));

Deno.test("engine lock: calls take the engine one at a time, in the order they asked", async () => {
  const lock = new EngineLock();
  const order: string[] = [];
  const run = async (name: string) => {
    const lease = await lock.acquire();
    order.push(`${name}+`);
    await turn();
    order.push(`${name}-`);
    lease.release();
    lease.release(); // idempotent
  };
  await Promise.all([run("a"), run("b"), run("c")]);
  assert.deepEqual(order, ["a+", "a-", "b+", "b-", "c+", "c-"]);
});

Deno.test("engine lock: waiting counts the calls in line, and a release hands the engine on once", async () => {
  const lock = new EngineLock();
  const a = await lock.acquire();
  const b = lock.acquire();
  const c = lock.acquire();
  assert.equal(lock.waiting, 2);
  a.release();
  a.release(); // a second release must not hand the engine to c as well
  const gotB = await b;
  await turn();
  assert.equal(lock.waiting, 1, "c waits for b");
  gotB.release();
  (await c).release();
  assert.equal(lock.waiting, 0);
  // a lease released by someone other than the holder changes nothing for the others
  const d = await lock.acquire();
  const e = lock.acquire();
  await turn();
  assert.equal(lock.waiting, 1);
  d.release();
  (await e).release();
});
