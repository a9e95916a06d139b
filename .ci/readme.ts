/**
 * The README runs as written: every command of its `sh` blocks runs in the repository root with
 * nothing but what the README states (no extra flags, no `XDG_RUNTIME_DIR`), one after another,
 * and each must exit with 0 and do what the text says (the checks below: non-empty output, JSON
 * with the fields the text names, a server that answers). `.ci/run` runs it on a fresh clone.
 *
 *     deno run -A .ci/readme.ts [--only <regex>] [--list] [README.md]
 *
 * HTML comments right before a fenced block (only blank lines between) steer it:
 *
 * - `<!-- readme-test: skip: <reason> -->`: the block is not run (it needs what CI cannot have);
 * - `<!-- readme-test: skip "<prefix>": <reason> -->`: nor its commands that start with the prefix;
 * - `<!-- readme-test: server "<command>" -->`: the block's commands (curl …) run against a server
 *   that this script starts with the command and stops after the block;
 * - `<!-- readme-test: save as <file> -->`: the block (e.g. `ts`) is written to that file in the
 *   repository root before the commands after it run, and removed at the end;
 * - `<!-- readme-test: output of "<command>" -->`: the block is that command's output as shown: its
 *   lines must match what the command printed here, numbers aside (timings, speeds and the like), except
 *   the `Loaded in` line whose sizes must be equal.
 *
 * Skipped commands are printed with their reason. At the end `deno.lock` and `deno.extra.lock` must
 * be as they were: a README command that needs a package the lockfiles lack fails here.
 *
 * @module
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
/** Longest a command may run, in milliseconds. */
const COMMAND_TIMEOUT_MS = 10 * 60_000;
/** Longest a server may take to answer `/health`, in milliseconds. */
const SERVER_START_MS = 3 * 60_000;

/** What a directive before a block asks for. */
type Directive =
  | { kind: "skip"; prefix?: string; reason: string }
  | { kind: "server"; command: string }
  | { kind: "save"; file: string }
  | { kind: "output"; command: string };

/** A fenced block of the README. */
export interface Block {
  lang: string;
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
  directives: Directive[];
}

/** Parses one `readme-test:` directive's text; throws on anything else. */
export function parseDirective(text: string, line: number): Directive {
  let m: RegExpExecArray | null;
  if ((m = /^skip "([^"]+)":\s*(.+)$/.exec(text))) return { kind: "skip", prefix: m[1]!, reason: m[2]! };
  if ((m = /^skip:\s*(.+)$/.exec(text))) return { kind: "skip", reason: m[1]! };
  if ((m = /^server "([^"]+)"$/.exec(text))) return { kind: "server", command: m[1]! };
  if ((m = /^save as (\S+)$/.exec(text))) return { kind: "save", file: m[1]! };
  if ((m = /^output of "([^"]+)"$/.exec(text))) return { kind: "output", command: m[1]! };
  throw new Error(`README.md:${line}: unknown readme-test directive: ${text}`);
}

/** The fenced blocks of a Markdown text, each with the directives right before it. */
export function parseBlocks(markdown: string): Block[] {
  const lines = markdown.split("\n");
  const blocks: Block[] = [];
  let pending: { directive: Directive; line: number }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i]!;
    const directive = /^<!--\s*readme-test:\s*(.*?)\s*-->\s*$/.exec(text);
    if (directive) {
      pending.push({ directive: parseDirective(directive[1]!, i + 1), line: i + 1 });
      continue;
    }
    const fence = /^(`{3,})(\S*)\s*$/.exec(text);
    if (fence) {
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && lines[i] !== fence[1]; i++) body.push(lines[i]!);
      blocks.push({
        lang: fence[2]!,
        code: body.join("\n"),
        line: start + 1,
        directives: pending.map((p) => p.directive),
      });
      pending = [];
      continue;
    }
    if (text.trim() !== "" && pending.length > 0) {
      throw new Error(
        `README.md:${pending[0]!.line}: a readme-test directive must come right before a block`,
      );
    }
  }
  if (pending.length > 0) throw new Error(`README.md:${pending[0]!.line}: a directive without a block`);
  return blocks;
}

/** The commands of an `sh` block: lines joined at a trailing `\`, blank and comment lines dropped. */
export function commandsOf(code: string): string[] {
  const out: string[] = [];
  let current = "";
  for (const raw of code.split("\n")) {
    const line = current === "" ? raw.trimEnd() : raw.trim();
    if (line.endsWith("\\")) {
      current += line.slice(0, -1).trimEnd() + " ";
      continue;
    }
    const command = (current + line).trim();
    current = "";
    if (command !== "" && !command.startsWith("#")) out.push(command);
  }
  if (current.trim() !== "") out.push(current.trim());
  return out;
}

/** A command without its trailing `# comment` (outside quotes), for display and matching. */
export function withoutComment(command: string): string {
  let quote: string | undefined;
  for (let i = 0; i < command.length; i++) {
    const c = command[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === "#" && (i === 0 || /\s/.test(command[i - 1]!))) return command.slice(0, i).trimEnd();
  }
  return command;
}

/** What a command did. */
export interface Result {
  command: string;
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** A check of what a command printed: a message when it is wrong. */
interface Check {
  /** Commands (without their comment) it applies to. */
  match: RegExp;
  /** Standard input to give (default none). */
  stdin?: string;
  check: (r: Result) => string | undefined;
}

function json(r: Result): Record<string, unknown> | string {
  try {
    const value = JSON.parse(r.stdout);
    return typeof value === "object" && value !== null ? value : `stdout is JSON but not an object`;
  } catch (e) {
    return `stdout is not JSON (${(e as Error).message}): ${r.stdout.slice(0, 200)}`;
  }
}

function fields(r: Result, names: string[]): string | undefined {
  const value = json(r);
  if (typeof value === "string") return value;
  const missing = names.filter((n) => !(n in value));
  return missing.length > 0 ? `JSON without ${missing.join(", ")}: ${r.stdout.slice(0, 200)}` : undefined;
}

function has(r: Result, ...patterns: RegExp[]): string | undefined {
  const missing = patterns.filter((p) => !p.test(r.stdout));
  return missing.length > 0
    ? `stdout does not match ${missing.join(", ")}:\n${r.stdout.slice(0, 600)}`
    : undefined;
}

/** What each kind of README command must print, beyond exit code 0 and a clean stderr. */
const CHECKS: Check[] = [
  { match: /--version$/, check: (r) => has(r, /^swapmoe \d+\.\d+\.\d+\n$/) },
  { match: /--help$/, check: (r) => has(r, /^swapmoe \d+\.\d+\.\d+: /, /^Usage: /m, /^Commands:/m) },
  { match: /^swapmoe --help$/, check: (r) => has(r, /^Usage: swapmoe \[command\]/m) },
  {
    match: /(^|\s)demo\b|^swapmoe$/,
    check: (r) => has(r, /^Loaded in /m, /^\[finished: /m, /^resident experts per layer .* hit rate/m),
  },
  {
    match: /demo .*--policy full/,
    check: (r) => has(r, /policy full, all-resident [\d.]+ MiB, 64 of 64 experts/),
  },
  { match: /demo .*--budget 50%/, check: (r) => has(r, /policy swapmoe, budget 50% = /) },
  { match: /demo "My prompt"/, check: (r) => has(r, /^My prompt/m) },
  {
    match: /generate .*--json/,
    check: (r) => fields(r, ["text", "ids", "finishReason", "promptTokens", "stats"]),
  },
  {
    match: /generate (?!.*--json)/,
    check: (r) => (r.stdout.trim() === "" ? "no text on stdout" : undefined),
  },
  {
    match: /(^|\s)chat(\s|$)/,
    stdin: "Hello\n/stats\n/exit\n",
    // a reply, not the note that the model ended its turn at once (generation_config's min_new_tokens)
    check: (r) =>
      has(r, /hit rate/) ?? (/\(no reply/.test(r.stdout) ? "the reply to Hello was empty" : undefined),
  },
  {
    match: /\binfo --json/,
    check: (r) => fields(r, ["model", "spec", "parameters", "bytes", "policies", "precisions"]),
  },
  { match: /\binfo$/, check: (r) => has(r, /^Architecture /m, /^Minimum /m, /^GPU /m) },
  {
    match: /curl .*\/v1\/chat\/completions/,
    check: (r) => {
      const v = json(r) as { choices?: { message?: { content?: unknown } }[] } | string;
      if (typeof v === "string") return v;
      const content = v.choices?.[0]?.message?.content;
      if (typeof content !== "string") return "no choices[0].message.content";
      return content.trim() === "" ? "empty choices[0].message.content" : undefined;
    },
  },
  {
    match: /curl .*-X PUT .*\/v1\/engine\/budget -d '\{"budget":"60%"\}'/,
    check: (r) => {
      const v = json(r) as { budgetBytes?: number; fullBytes?: number; gpuBytes?: number } | string;
      if (typeof v === "string") return v;
      const share = (v.budgetBytes ?? NaN) / (v.fullBytes ?? NaN);
      return Math.abs(share - 0.6) < 0.01 && v.gpuBytes! <= v.budgetBytes!
        ? undefined
        : `budget is not 60% of the footprint: ${r.stdout}`;
    },
  },
  { match: /curl .*\/metrics/, check: (r) => has(r, /^swapmoe_info\{/m, /^swapmoe_gpu_bytes/m) },
  {
    match: /\beval (?!.*--sweep)/,
    check: (r) => has(r, /^perplexity [\d.]+ on sotu-test/m, /^policy swapmoe /m),
  },
  { match: /\beval --sweep/, check: (r) => has(r, /^\| budget \(bf16 experts\) \|/m, /`full`/) },
  { match: /example\.ts$/, check: (r) => has(r, /held of/, /rows of logits/) },
  { match: /gpu_probe\.ts$/, check: (r) => has(r, /^WebGPU adapter: /) },
];

/** Lines of `shown` (the README's output block) that `printed` does not match, numbers aside. */
export function outputMismatches(shown: string, printed: string): string[] {
  const number = /\d+(\.\d+)?/g;
  const shape = (line: string) =>
    line.replace(/ on .*$/, " on <adapter>").replace(/^Loaded in [\d.]+ s/, "Loaded in # s").replace(
      /^(?!Loaded in).*$/,
      (l) => l.replace(number, "#"),
    );
  const key = (line: string) => line.split(/\s+/).slice(0, 2).join(" ").replace(number, "#");
  const out: string[] = [];
  const printedLines = printed.split("\n");
  // the lines of the summary and the header; the generated text differs from run to run
  for (const line of shown.split("\n")) {
    if (!/^(swapmoe demo:|Loaded in|\[finished:|prefill|GPU|resident experts)/.test(line)) continue;
    const match = printedLines.find((p) => key(p) === key(line));
    if (match === undefined) out.push(`no line like: ${line}`);
    else if (shape(match) !== shape(line)) out.push(`README: ${line}\n    here:   ${match}`);
  }
  return out;
}

/** The environment of README commands: the caller's, without what the README does not ask for. */
function commandEnv(installRoot: string): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.XDG_RUNTIME_DIR; // the library quiets the Vulkan loader itself: check that it does
  env.NO_COLOR = "1";
  env.DENO_NO_UPDATE_CHECK = "1";
  env.DENO_INSTALL_ROOT = installRoot; // `deno install -g` lands here, not in ~/.deno
  env.PATH = `${installRoot}/bin:${env.PATH ?? ""}`;
  return env;
}

async function run(command: string, env: Record<string, string>, stdin?: string): Promise<Result> {
  const t0 = performance.now();
  const child = new Deno.Command("bash", {
    args: ["-o", "pipefail", "-c", command],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), COMMAND_TIMEOUT_MS);
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return {
    command,
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Problems with a result: the exit code, stderr, then the checks that match the command. */
function problems(r: Result): string[] {
  const bare = withoutComment(r.command);
  const out: string[] = [];
  if (r.code !== 0) out.push(`exit code ${r.code}`);
  if (/^error/im.test(r.stderr)) out.push(`an error on stderr`);
  if (/XDG_RUNTIME_DIR is invalid/.test(r.stderr)) {
    out.push("the Vulkan loader's XDG_RUNTIME_DIR warning on stderr");
  }
  for (const c of CHECKS) {
    if (!c.match.test(bare)) continue;
    const p = c.check(r);
    if (p) out.push(p);
  }
  return out;
}

/** A server started for a block: stopped with SIGTERM, its output kept for a failure report. */
interface Server {
  stop(): Promise<Result>;
}

async function startServer(command: string, env: Record<string, string>, port: number): Promise<Server> {
  try {
    using probe = Deno.listen({ hostname: "127.0.0.1", port });
    void probe;
  } catch {
    throw new Error(`Port ${port} is in use: the README's server cannot start there`);
  }
  const t0 = performance.now();
  const child = new Deno.Command("bash", {
    args: ["-c", `exec ${command}`],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  let exited = false;
  output.finally(() => (exited = true));
  const stop = async (): Promise<Result> => {
    if (!exited) child.kill("SIGTERM");
    const out = await output;
    const dec = new TextDecoder();
    return {
      command,
      code: out.code,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      seconds: (performance.now() - t0) / 1000,
    };
  };
  while (performance.now() - t0 < SERVER_START_MS && !exited) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/health`);
      await res.body?.cancel();
      if (res.ok) return { stop };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const r = await stop();
  throw new Error(`${command} did not answer on port ${port}:\n${r.stdout}${r.stderr}`);
}

async function main(args: string[]): Promise<number> {
  const only = args.includes("--only") ? new RegExp(args[args.indexOf("--only") + 1]!) : undefined;
  const list = args.includes("--list");
  const file = args.find((a, i) => !a.startsWith("--") && args[i - 1] !== "--only") ??
    join(ROOT, "README.md");
  const blocks = parseBlocks(await Deno.readTextFile(file));
  const locks = ["deno.lock", "deno.extra.lock"];
  const before = await Promise.all(locks.map((l) => Deno.readTextFile(join(ROOT, l))));
  const installRoot = await Deno.makeTempDir({ prefix: "swapmoe-readme-" });
  const env = commandEnv(installRoot);
  const saved: string[] = [];
  const printed = new Map<string, string>();
  let ran = 0, skipped = 0, failed = 0;
  const report = (status: string, seconds: number | undefined, command: string, detail = "") =>
    console.log(
      `${status.padEnd(5)} ${
        seconds === undefined ? "".padStart(7) : `${seconds.toFixed(1)} s`.padStart(7)
      }  ${withoutComment(command)}${detail}`,
    );
  try {
    for (const block of blocks) {
      const save = block.directives.find((d) => d.kind === "save");
      if (save) {
        const path = join(ROOT, save.file);
        await Deno.writeTextFile(path, block.code + "\n");
        saved.push(path);
      }
      const output = block.directives.find((d) => d.kind === "output");
      if (output && !list) {
        const got = printed.get(output.command);
        if (got === undefined) {
          if (!only) {
            failed++;
            console.log(
              `FAIL           output of "${output.command}" (line ${block.line}): that command did not run`,
            );
          }
          continue;
        }
        const bad = outputMismatches(block.code, got);
        if (bad.length > 0) {
          failed++;
          console.log(
            `FAIL           README.md:${block.line}, the output shown, differs from what ${output.command} printed:`,
          );
          for (const b of bad) console.log(`    ${b}`);
        } else {console.log(
            `ok             README.md:${block.line}: the output shown matches ${output.command}`,
          );}
      }
      if (block.lang !== "sh") continue;
      const commands = commandsOf(block.code);
      const blockSkip = block.directives.find((d) => d.kind === "skip" && d.prefix === undefined);
      const serverDirective = block.directives.find((d) => d.kind === "server");
      let server: Server | undefined;
      try {
        for (const command of commands) {
          const bare = withoutComment(command);
          const skip = blockSkip ??
            block.directives.find((d) => d.kind === "skip" && d.prefix && bare.startsWith(d.prefix));
          if (skip?.kind === "skip" || (only && !only.test(bare))) {
            if (skip?.kind === "skip") {
              skipped++;
              report("skip", undefined, command, `: ${skip.reason}`);
            }
            continue;
          }
          if (list) {
            console.log(`run           ${bare}`);
            continue;
          }
          if (serverDirective?.kind === "server" && !server) {
            const port = Number(/localhost:(\d+)/.exec(block.code)?.[1] ?? 8000);
            server = await startServer(serverDirective.command, env, port);
          }
          const stdin = CHECKS.find((c) => c.stdin !== undefined && c.match.test(bare))?.stdin;
          const r = await run(command, env, stdin);
          printed.set(bare, r.stdout);
          ran++;
          const bad = problems(r);
          if (bad.length === 0) report("ok", r.seconds, command);
          else {
            failed++;
            report("FAIL", r.seconds, command, `: ${bad.join("; ")}`);
            console.log(`    stdout: ${r.stdout.slice(-1500).replaceAll("\n", "\n    ")}`);
            console.log(`    stderr: ${r.stderr.slice(-1500).replaceAll("\n", "\n    ")}`);
          }
        }
      } finally {
        if (server) {
          const r = await server.stop();
          const bad = r.code === 0 && /Shutting down/.test(r.stderr) ? [] : [`exit code ${r.code}`];
          if (/XDG_RUNTIME_DIR is invalid/.test(r.stderr)) bad.push("the XDG_RUNTIME_DIR warning");
          if (bad.length === 0) report("ok", r.seconds, `${r.command} (the server, stopped with SIGTERM)`);
          else {
            failed++;
            report("FAIL", r.seconds, r.command, `: ${bad.join("; ")}\n${r.stdout}${r.stderr}`);
          }
        }
      }
    }
  } finally {
    for (const path of saved) await Deno.remove(path).catch(() => {});
    await Deno.remove(installRoot, { recursive: true }).catch(() => {});
  }
  const after = await Promise.all(locks.map((l) => Deno.readTextFile(join(ROOT, l))));
  locks.forEach((l, i) => {
    if (before[i] !== after[i]) {
      failed++;
      console.log(`FAIL           ${l} changed: a README command needed a package it did not lock`);
    }
  });
  console.log(`README: ${ran} commands ran, ${skipped} skipped, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
