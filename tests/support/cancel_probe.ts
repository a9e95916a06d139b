/**
 * Measures whether a client that leaves cancels its generation, for several request-body sizes and
 * request shapes (plain or streamed; running or waiting in the queue). Starts `main.ts serve` as a
 * child process, reads its access log, and prints one line per case:
 *
 *   deno run -A tests/support/cancel_probe.ts [sizes...]      # default 100 400 4096 65536
 *
 * "ended" is the time from the client's disconnect to the server's access-log line for that request
 * (its generation ended); "tokens" is what it generated in all. A generation that was not cancelled
 * runs its whole `max_tokens` (60) and, when queued, first waits for the request ahead of it.
 */
const SIZES = Deno.args.length > 0 ? Deno.args.map(Number) : [100, 400, 4096, 65536];
const MAX = 60;
const PROMPT = "The state of the Union is";
/** The request ahead in the queued cases: another prompt, so that its log line tells itself apart. */
const AHEAD = "Congress";
const root = new URL("../../", import.meta.url).pathname;

const port = 20000 + Math.floor(Math.random() * 20000);
const child = new Deno.Command(Deno.execPath(), {
  args: ["run", "-A", `${root}main.ts`, "serve", "--port", String(port), "--context-length", "256"],
  stdout: "piped",
  stderr: "piped",
  env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
}).spawn();
const base = `http://127.0.0.1:${port}`;

/** Access-log lines as they come: `… POST /v1/completions 499 1234ms 7+12 tokens`. */
const log: { at: number; line: string }[] = [];
(async () => {
  const lines = child.stderr.pipeThrough(new TextDecoderStream());
  let buf = "";
  for await (const s of lines) {
    buf += s;
    for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
      log.push({ at: performance.now(), line: buf.slice(0, i) });
      buf = buf.slice(i + 1);
    }
  }
})();
child.stdout.cancel();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function health(): Promise<{ running: number; waiting: number }> {
  return await (await fetch(`${base}/health`)).json();
}
async function until(
  ok: (h: { running: number; waiting: number }) => boolean,
  ms = 60_000,
): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    try {
      if (ok(await health())) return true;
    } catch { /* not up yet */ }
    await sleep(50);
  }
  return false;
}

/** A completions body of exactly `size` bytes (padded with OpenAI's ignored `user` field). */
function body(size: number, stream: boolean, prompt = PROMPT): string {
  const b = { prompt, max_tokens: MAX, min_tokens: MAX, stream, user: "" };
  const bare = JSON.stringify(b).length;
  b.user = "x".repeat(Math.max(0, size - bare));
  return JSON.stringify(b);
}

/** Waits for the access-log line, after index `from`, of a generation whose prompt had `promptTokens`. */
async function entry(from: number, promptTokens: number, ms = 90_000) {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    for (const l of log.slice(from)) {
      const m = / POST \/v1\/completions (\d{3}) \d+ms (\d+)\+(\d+) tokens/.exec(l.line);
      if (m && Number(m[2]) === promptTokens) return { at: l.at, status: m[1], tokens: m[3] };
    }
    await sleep(20);
  }
  return undefined;
}

async function request(size: number, stream: boolean, signal: AbortSignal, prompt = PROMPT): Promise<void> {
  try {
    const res = await fetch(`${base}/v1/completions`, {
      method: "POST",
      body: body(size, stream, prompt),
      signal,
    });
    for await (const _ of res.body ?? []) { /* read until the end or the abort */ }
  } catch { /* aborted */ }
}

if (!await until(() => true, 120_000)) throw new Error("the server did not start");
/** Prompt tokens of PROMPT as the server counts them (its log line names them). */
const promptTokens = (await (await fetch(`${base}/v1/completions`, {
  method: "POST",
  body: JSON.stringify({ prompt: PROMPT, max_tokens: 1 }),
})).json()).usage.prompt_tokens;
console.log("shape                size     ended after disconnect   status  tokens");
for (const size of SIZES) {
  for (const stream of [false, true]) {
    for (const queued of [false, true]) {
      await until((h) => h.running === 0 && h.waiting === 0, 120_000);
      const blocker = new AbortController();
      let blocking: Promise<void> | undefined;
      if (queued) {
        blocking = request(100, true, blocker.signal, AHEAD); // a streamed request ahead of it
        await until((h) => h.running === 1);
      }
      const from = log.length;
      const ac = new AbortController();
      const pending = request(size, stream, ac.signal);
      await until((h) => (queued ? h.waiting === 1 : h.running === 1));
      await sleep(queued ? 300 : 1500);
      const t0 = performance.now();
      ac.abort();
      await pending;
      if (queued) {
        // the request ahead is cancelled too; ours must then not run
        blocker.abort();
        await blocking;
      }
      const mine = await entry(from, promptTokens);
      const shape = `${stream ? "stream" : "plain "} ${queued ? "queued " : "running"}`;
      const ended = mine ? `${((mine.at - t0) / 1000).toFixed(1)} s` : "never";
      console.log(
        `${shape.padEnd(20)} ${String(size).padStart(6)}   ${ended.padStart(8)}                 ${
          mine?.status ?? "-"
        }     ${mine?.tokens ?? "-"}`,
      );
    }
  }
}
child.kill("SIGTERM");
await child.status;
