/**
 * Measures how long `GET /health` takes while the server handles huge prompts: starts `main.ts serve`
 * as a child process, polls /health every 20 ms, sends `count` completions whose prompt is `bytes`
 * long (plain and as a chat message), and prints the slowest /health answer and each request's status
 * and time:
 *
 *   deno run -A tests/support/health_probe.ts [bytes] [count]     # default 1000000 1
 */
const BYTES = Number(Deno.args[0] ?? 1_000_000);
const COUNT = Number(Deno.args[1] ?? 1);
const root = new URL("../../", import.meta.url).pathname;
const port = 20000 + Math.floor(Math.random() * 20000);
const child = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", `${root}main.ts`, "serve", "--port", String(port), "--quiet"],
  stdout: "null",
  stderr: "null",
  env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
}).spawn();
const base = `http://127.0.0.1:${port}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (let up = false; !up;) {
  up = await fetch(`${base}/health`).then((r) => r.ok, () => false);
  if (!up) await sleep(200);
}

let polling = true;
let slowest = 0;
const poller = (async () => {
  while (polling) {
    const t = performance.now();
    await (await fetch(`${base}/health`)).body?.cancel();
    slowest = Math.max(slowest, performance.now() - t);
    await sleep(20);
  }
})();
await sleep(500);
const idle = slowest;

// words, so that the prompt is many tokens, as a real one is
const text = "The state of the Union is strong. ".repeat(Math.ceil(BYTES / 34)).slice(0, BYTES);
const t0 = performance.now();
const results = await Promise.all(Array.from({ length: COUNT }, async (_, i) => {
  const chat = i % 2 === 1;
  const res = await fetch(`${base}/v1/${chat ? "chat/completions" : "completions"}`, {
    method: "POST",
    body: JSON.stringify(
      chat ? { messages: [{ role: "user", content: text }], max_tokens: 1 } : { prompt: text, max_tokens: 1 },
    ),
  });
  const body = await res.json();
  return `${chat ? "chat" : "completion"} ${res.status} after ${
    ((performance.now() - t0) / 1000).toFixed(2)
  } s${body.error ? `: ${body.error.message.slice(0, 100)}` : ""}`;
}));
await sleep(200);
polling = false;
await poller;
console.log(`${COUNT} request(s) with a ${BYTES}-byte prompt`);
for (const r of results) console.log(`  ${r}`);
console.log(`slowest /health: ${slowest.toFixed(0)} ms (idle before: ${idle.toFixed(0)} ms)`);
child.kill("SIGTERM");
await child.status;
