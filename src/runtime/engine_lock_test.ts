/** The engine's lock without a GPU: arrival order, pausing, parking, and taking the engine back. */
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

Deno.test("engine lock: a paused holder nobody waits for keeps the engine", async () => {
  const lock = new EngineLock();
  const lease = await lock.acquire();
  let parks = 0;
  lease.pause(() => Promise.resolve(void parks++));
  await turn();
  await turn();
  await lease.resume();
  assert.equal(parks, 0);
  assert.equal(await lease.hold(), false);
  lease.release();
});

Deno.test("engine lock: a holder that resumes within the turn is not parked for a waiter", async () => {
  const lock = new EngineLock();
  const lease = await lock.acquire();
  let parks = 0;
  const waiter = lock.acquire();
  lease.pause(() => Promise.resolve(void parks++));
  await Promise.resolve(); // a consumer that asks for the next chunk at once
  await lease.resume();
  await turn();
  assert.equal(parks, 0);
  assert.equal(await lease.hold(), false);
  lease.release();
  (await waiter).release();
});

Deno.test("engine lock: a paused holder is parked for a waiter, then queues behind it", async () => {
  const lock = new EngineLock();
  const a = await lock.acquire();
  const order: string[] = [];
  a.pause(async () => {
    await turn();
    order.push("a parked");
  });
  // a call that comes later finds a paused holder: it gets the engine once the park settled
  const b = await lock.acquire();
  order.push("b holds");
  assert.equal(a.parked, true);
  const aBack = a.hold().then((parked) => {
    order.push("a holds again");
    return parked;
  });
  await turn();
  order.push("b releases");
  b.release();
  assert.equal(await aBack, true);
  assert.deepEqual(order, ["a parked", "b holds", "b releases", "a holds again"]);
  a.release();
});

Deno.test("engine lock: a waiter parks a holder that pauses after it asked", async () => {
  const lock = new EngineLock();
  const a = await lock.acquire();
  const b = lock.acquire();
  await turn();
  let parks = 0;
  a.pause(() => Promise.resolve(void parks++));
  (await b).release();
  assert.equal(parks, 1);
  assert.equal(await a.hold(), true);
  a.release();
});

Deno.test("engine lock: resume waits for a park under way and rethrows its error", async () => {
  const lock = new EngineLock();
  const a = await lock.acquire();
  let settled = false;
  a.pause(async () => {
    await turn();
    settled = true;
    throw new Error("device lost");
  });
  const b = lock.acquire();
  await turn(); // the park starts
  await assert.rejects(a.resume(), /device lost/);
  assert.equal(settled, true);
  (await b).release();
  await a.resume(); // the error is reported once
  a.release();
});

Deno.test("engine lock: releasing a paused or parked holder hands the engine on once", async () => {
  const lock = new EngineLock();
  const a = await lock.acquire();
  a.pause(() => Promise.resolve());
  const b = lock.acquire();
  a.release(); // a consumer that returned the iterator while paused
  const c = lock.acquire();
  (await b).release();
  (await c).release();
  assert.equal(lock.waiting, 0);
  // and a parked holder's release changes nothing for the others
  const d = await lock.acquire();
  d.pause(() => Promise.resolve());
  const e = await lock.acquire();
  d.release();
  const f = lock.acquire();
  await turn();
  assert.equal(lock.waiting, 1, "f waits for e");
  e.release();
  (await f).release();
});
