/**
 * The command line end to end: each test runs `deno run -A main.ts …` as a child process on the
 * bundled model and checks what a user sees: the output, the exit code, one-line errors without stack
 * traces.
 */
import assert from "node:assert/strict";
import { COMMANDS } from "../src/cli/main.ts";
import type { GenerateOutput } from "../src/cli/generate.ts";
import type { ModelInfo } from "../src/cli/info.ts";
import { budgetedOptions, engineOptions } from "../src/cli/options.ts";
import { installedName } from "../src/cli/program.ts";
import { parseServeArgs } from "../src/cli/serve.ts";
import { closest, editDistance } from "../src/cli/suggest.ts";
import { CORPUS_PACKAGES } from "../src/eval/corpus.ts";
import { VERSION } from "../src/version.ts";
import { type CliRun as Run, runMain } from "./support/cli.ts";

const ROOT = new URL("..", import.meta.url);

/** Runs `main.ts` with `args`, feeding `stdin` when given. */
const cli = (args: string[], stdin?: string): Promise<Run> => runMain(args, { stdin });

function assertOk(r: Run): void {
  assert.equal(r.code, 0, `exit code 0 expected; stderr:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^error/m, "no error on stderr");
}

/**
 * A usage error: exit code 2, one `error: …` line, then one line naming the command's --help (not
 * the whole usage); no stack frames.
 */
function assertUsageError(r: Run, pattern: RegExp, command = /\w+/): void {
  assert.equal(r.code, 2, `exit code 2 expected; stderr:\n${r.stderr}`);
  const lines = r.stderr.split("\n");
  assert.match(lines[0]!, /^error: \S/, "an error line first");
  assert.match(lines[0]!, pattern);
  assert.match(
    lines[1]!,
    new RegExp(`^hint: "deno run -A main\\.ts ${command.source} --help" lists the options$`),
  );
  assert.deepEqual(lines.slice(2), [""], `two lines in all:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack frames");
  assert.equal(r.stdout, "", "nothing on stdout");
}

Deno.test("demo: a bare main.ts streams text and ends with the summary", async () => {
  const r = await cli(["--max-tokens", "8"]);
  assertOk(r);
  assert.ok(!r.stdout.includes("\x1b["), "plain output when stdout is not a terminal");
  assert.match(r.stdout, /policy swapmoe, budget 70%/);
  const generated = /The state of the Union is(.*)\n/.exec(r.stdout)?.[1] ?? "";
  assert.ok(generated.trim().length > 0, `generated text after the prompt:\n${r.stdout}`);
  assert.match(r.stdout, /prefill [\d.]+ tok\/s \(\d+ tokens\) · decode [\d.]+ tok\/s \(\d+ tokens\)/);
  assert.match(r.stdout, /GPU [\d.]+ [KMG]iB held of [\d.]+ [KMG]iB budget \(all-resident/);
  assert.match(r.stdout, /resident experts per layer (\d+\/16 ){3}\d+\/16 · hit rate [\d.]+% · swaps \d+/);
});

Deno.test("demo: options after a bare main.ts reach the demo", async () => {
  assertUsageError(await cli(["--policy", "nope"]), /Invalid --policy: "nope"/, /demo/);
});

Deno.test("demo --policy full: every expert, no 70% budget applied to it", async () => {
  const r = await cli(["demo", "--policy", "full", "--max-tokens", "2"]);
  assertOk(r);
  assert.match(r.stdout, /policy full, all-resident [\d.]+ MiB, 64 of 64 experts on the GPU/);
  assert.match(r.stdout, /resident experts per layer 16\/16 16\/16 16\/16 16\/16 · hit rate 100\.0%/);
});

let greedyText = "";

Deno.test("generate --json: one object with text, ids, finish reason and stats", async () => {
  const prompt = "The state of the Union is";
  const r = await cli(["generate", "--policy", "full", "--max-tokens", "8", "--json", prompt]);
  assertOk(r);
  const out = JSON.parse(r.stdout) as GenerateOutput;
  assert.ok(out.ids.length >= 1 && out.ids.length <= 8, `1 to 8 ids, got ${out.ids.length}`);
  assert.ok(out.finishReason === "length" || out.finishReason === "stop");
  if (out.finishReason === "length") assert.equal(out.ids.length, 8);
  assert.equal(typeof out.text, "string");
  assert.ok(out.promptTokens > 0);
  assert.equal(out.stats.policy, "full");
  assert.equal(out.stats.hitRate, 1);
  greedyText = out.text;
});

Deno.test("generate: reads the prompt from stdin and --stop ends the text before the stop string", async () => {
  // greedy under full is deterministic: the same text as the --json test, cut at its second word
  const word = greedyText.trim().split(/\s+/)[1];
  assert.ok(word, `a second word in ${JSON.stringify(greedyText)}`);
  const r = await cli(
    ["generate", "--policy", "full", "--max-tokens", "8", "--stop", word, "--stop", "\u2603", "--json"],
    "The state of the Union is\n",
  );
  assertOk(r);
  const out = JSON.parse(r.stdout) as GenerateOutput;
  assert.equal(out.finishReason, "stop");
  assert.equal(out.text, greedyText.slice(0, greedyText.indexOf(word)));
});

Deno.test("generate: streams plain text", async () => {
  const r = await cli(["generate", "--policy", "full", "--max-tokens", "4", "--stats", "Hello"]);
  assertOk(r);
  assert.ok(r.stdout.trim().length > 0);
  assert.match(r.stderr, /hit rate 100\.0%/);
});

Deno.test("info: architecture, parameters, bytes and footprints", async () => {
  const r = await cli(["info"]);
  assertOk(r);
  for (
    const field of [
      /Architecture +mixtral: 4 layers/,
      /Parameters +[\d.]+ M in all, [\d.]+ M in experts, [\d.]+ M active per token/,
      /Expert bytes +192\.0 KiB per expert/,
      /Dense bytes +[\d.]+ [KM]iB/,
      // 16 experts × a [128, 256] bf16 gate matrix: the one buffer per layer and matrix a GPU binds whole
      /Largest buffer +1\.0 MiB: a layer's 16 gate matrices, every expert resident/,
      /Minimum +[\d.]+ MiB/,
      /full +[\d.]+ MiB, every expert resident/,
      /static, swapmoe, lru +[\d.]+ MiB to [\d.]+ MiB/,
    ]
  ) assert.match(r.stdout, field);
});

Deno.test("info --json: the same as numbers", async () => {
  const r = await cli(["info", "--json", "--context-length", "256"]);
  assertOk(r);
  const info = JSON.parse(r.stdout) as ModelInfo;
  assert.equal(info.spec.numExperts, 16);
  assert.equal(info.contextLength, 256);
  assert.equal(info.bytes.expert, 3 * 128 * 256 * 2);
  assert.equal(info.bytes.allExperts, 4 * 16 * info.bytes.expert);
  assert.equal(info.bytes.largestBuffer.bytes, 16 * 128 * 256 * 2);
  assert.ok(info.bytes.minimumBudget < info.bytes.full);
  assert.equal(info.bytes.full, info.policies.full!.minimumBytes);
  assert.equal(info.parameters.experts, 4 * 16 * 3 * 128 * 256);
  assert.ok(info.parameters.total > info.parameters.activePerToken);
  assert.deepEqual(Object.keys(info.policies), ["full", "static", "swapmoe", "lru"]);
});

Deno.test("info --json on Switch: experts hold two matrices (wi, wo), not three", async () => {
  const r = await cli(["info", "--json", "--model", "tests/fixtures/tiny-switch"]);
  assertOk(r);
  const info = JSON.parse(r.stdout) as ModelInfo;
  // tiny-switch: d_model 64, d_ff 128, one sparse block in the encoder and one in the decoder, 8 experts
  assert.equal(info.bytes.expert, 2 * 64 * 128 * 2);
  assert.equal(info.parameters.experts, 2 * 8 * 2 * 64 * 128);
  assert.ok(info.parameters.experts < info.parameters.total);
  assert.equal(
    info.parameters.activePerToken,
    info.parameters.total - info.parameters.experts + 2 * 2 * 64 * 128,
  );
});

Deno.test("chat: replies to each line, keeps going through /stats and /reset, stops at /exit", async () => {
  const r = await cli(
    ["chat", "--policy", "full", "--max-tokens", "4", "--min-tokens", "4"],
    "Hello\n/stats\n/reset\n/nope\nAnd again\n/exit\nnever read\n",
  );
  assertOk(r);
  const lines = r.stdout.split("\n");
  assert.match(r.stdout, /resident experts per layer/);
  assert.match(r.stdout, /\(conversation forgotten\)/);
  assert.match(r.stdout, /Unknown command: \/nope/);
  assert.equal(lines.filter((l) => l.startsWith("prefill")).length, 1);
});

Deno.test("chat: a chat template that fails or stops at its limits ends the chat with exit code 2", async () => {
  const from = new URL("../models/sotu-moe-mini/", import.meta.url).pathname;
  for (
    const [template, message] of [
      ["{{ raise_exception('No chat here') }}", /^error: Chat template failed to render: .*No chat here/],
      ["{% for i in range(1000000000) %}x{% endfor %}", /^error: Chat template stopped: .*a number argument/],
    ]
  ) {
    const dir = await Deno.makeTempDir({ prefix: "swapmoe-chat-" });
    try {
      for await (const e of Deno.readDir(from)) {
        if (e.isFile) await Deno.copyFile(from + e.name, `${dir}/${e.name}`);
      }
      await Deno.writeTextFile(`${dir}/chat_template.jinja`, template as string);
      const r = await cli(["chat", "--model", dir, "--max-tokens", "2"], "Hello\nAgain\n");
      assert.equal(r.code, 2, `exit code 2 expected; stderr:\n${r.stderr}`);
      assert.match(r.stderr.trim(), message as RegExp);
      assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack frames");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("--help: main.ts lists the commands, each command shows its usage, each flag once", async () => {
  const top = await cli(["--help"]);
  assertOk(top);
  for (const c of COMMANDS) assert.match(top.stdout, new RegExp(`^  ${c.name} `, "m"));
  for (const c of COMMANDS) {
    const r = await cli([c.name, "--help"]);
    assertOk(r);
    assert.ok(r.stdout.startsWith("Usage: deno run -A main.ts"), `${c.name} --help`);
    // pull, list and rm manage the hub cache and load no model
    if (!["pull", "list", "rm"].includes(c.name)) assert.match(r.stdout, /--model <dir>/);
    // a flag is described where a line starts with it (after `-h, `): once
    const described = [...r.stdout.matchAll(/^ {2}(?:-\w, )?(--[\w-]+)/gm)].map((m) => m[1]!);
    const twice = described.filter((f, i) => described.indexOf(f) !== i);
    assert.deepEqual(twice, [], `${c.name} --help describes ${twice.join(", ")} more than once`);
  }
});

Deno.test("--version: the version of deno.json, also in src/version.ts (which JSR imports carry)", async () => {
  const { version } = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  assert.equal(VERSION, version, "src/version.ts must say deno.json's version");
  const r = await cli(["--version"]);
  assertOk(r);
  assert.equal(r.stdout, `swapmoe ${version}\n`);
});

Deno.test("mistyped commands and flags: one error line with the closest name, one line naming --help", async () => {
  const command = await cli(["genrate", "x"]);
  assert.equal(command.code, 2);
  assert.deepEqual(command.stderr.split("\n"), [
    'error: Unknown command: "genrate" (did you mean generate?)',
    'hint: "deno run -A main.ts --help" lists the commands',
    "",
  ]);
  assertUsageError(
    await cli(["generate", "--polciy", "full", "x"]),
    /^error: Unknown option: --polciy \(did you mean --policy\?\)$/,
    /generate/,
  );
  assertUsageError(await cli(["eval", "--max-window", "2"]), /\(did you mean --max-windows\?\)$/, /eval/);
  // nothing close: no guess
  assertUsageError(await cli(["info", "--frobnicate"]), /^error: Unknown option: --frobnicate$/, /info/);
});

Deno.test("closest: typos, transpositions and unique prefixes; nothing when far or tied", () => {
  assert.equal(editDistance("polciy", "policy"), 1);
  assert.equal(editDistance("genrate", "generate"), 1);
  assert.equal(editDistance("", "abc"), 3);
  assert.equal(editDistance("kitten", "sitting"), 3);
  const names = COMMANDS.map((c) => c.name);
  assert.equal(closest("serv", names), "serve");
  assert.equal(closest("gen", names), "generate");
  assert.equal(closest("evl", names), "eval");
  assert.equal(closest("frobnicate", names), undefined);
  assert.equal(closest("ab", ["ac", "ad"]), undefined, "a tie is no suggestion");
  assert.equal(closest("temp", ["temperature", "top-p", "top-k"]), "temperature");
});

Deno.test("a --budget without --policy selects swapmoe; demo and serve start at swapmoe 70%, full at all", () => {
  assert.deepEqual(engineOptions({ budget: "60%" }), { policy: "swapmoe", budget: "60%" });
  assert.deepEqual(engineOptions({ budget: "60%", policy: "lru" }), { policy: "lru", budget: "60%" });
  assert.deepEqual(engineOptions({}), {});
  assert.deepEqual(parseServeArgs([]).engine, { policy: "swapmoe", budget: "70%" });
  assert.deepEqual(parseServeArgs(["--budget", "50%"]).engine, { policy: "swapmoe", budget: "50%" });
  assert.deepEqual(parseServeArgs(["--policy", "full"]).engine, { policy: "full" });
  assert.deepEqual(parseServeArgs(["--policy", "static"]).engine, { policy: "static", budget: "70%" });
  assert.deepEqual(budgetedOptions({ policy: "full" }, "70%", { contextLength: 512 }), {
    policy: "full",
    contextLength: 512,
  });
});

Deno.test("the help names the installed command when run through a deno install shim", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const main = new URL("../main.ts", import.meta.url).href;
    const shim = `${dir}/swapmoe`;
    await Deno.writeTextFile(
      shim,
      `#!/bin/sh\n# generated by deno install\nexec ${Deno.execPath()} run --allow-all '${main}' "$@"\n`,
    );
    assert.equal(installedName(shim, main), "swapmoe");
    assert.equal(installedName(shim, "file:///elsewhere/main.ts"), undefined, "a shim of another script");
    assert.equal(installedName("/usr/bin/deno", main), undefined);
    assert.equal(installedName(undefined, main), undefined);
    await Deno.chmod(shim, 0o755);
    // as a shell runs it: `$_` is the shim's path
    const out = await new Deno.Command("bash", {
      args: ["-c", `${shim} --help`],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const help = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(help, /^Usage: swapmoe \[command\] \[options\]$/m);
    assert.match(help, /runs the demo: swapmoe --budget 50%/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a plain run installs only the engine's packages: deno.lock locks deno.json's imports alone", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const lock = JSON.parse(await Deno.readTextFile(new URL("../deno.lock", import.meta.url)));
  // Deno 2.9 installs every package of the lockfile in use on the first run, needed or not
  assert.deepEqual(
    Object.keys(lock.specifiers).sort(),
    Object.values(config.imports).sort(),
    "deno.lock locks more than deno.json's imports: a test or eval ran without deno.extra.lock " +
      "(run them through deno task test and deno task eval) and added its packages; git checkout deno.lock",
  );
  assert.deepEqual(Object.keys(lock.npm).sort(), [
    "@huggingface/jinja@0.5.11",
    "@huggingface/tokenizers@0.2.0",
  ]);
  const extra = JSON.parse(await Deno.readTextFile(new URL("../deno.extra.lock", import.meta.url)));
  for (const s of [...Object.keys(lock.specifiers), "npm:openai@7.59.0", ...CORPUS_PACKAGES]) {
    assert.ok(s in extra.specifiers, `deno.extra.lock locks ${s}`);
  }
  assert.ok(config.publish.exclude.includes("models/"), "the package on JSR leaves the model weights out");
});

Deno.test("no XDG_RUNTIME_DIR warning from the Vulkan loader when the variable is unset", async () => {
  const env = Deno.env.toObject();
  delete env.XDG_RUNTIME_DIR;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-ffi", "--allow-env", "tests/gpu_probe.ts"],
    cwd: ROOT,
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, stderr);
  assert.doesNotMatch(stderr, /XDG_RUNTIME_DIR/);
});

Deno.test("model flags become engine options: --max-upload is maxUploadBytesPerStep", () => {
  const o = engineOptions({
    policy: "swapmoe",
    budget: "60%",
    "max-upload": "12MiB",
    "context-length": "256",
  });
  assert.deepEqual(o, {
    policy: "swapmoe",
    budget: "60%",
    maxUploadBytesPerStep: 12 * 2 ** 20,
    contextLength: 256,
  });
});

Deno.test("bad flags and values: one-line error, usage, exit code 2", async (t) => {
  const cases: [string[], RegExp][] = [
    [
      ["generate", "--policy", "bogus", "x"],
      /Invalid --policy: "bogus", expected one of full, static, swapmoe, lru/,
    ],
    [["generate", "--budget", "lots", "x"], /Invalid --budget: "lots"/],
    [["generate", "--max-upload", "12%", "x"], /Invalid --max-upload: "12%", expected bytes or a size/],
    [["generate", "--model", "no/such/folder", "x"], /Model folder not found: no\/such\/folder/],
    [["generate", "--max-tokens", "-5", "x"], /Invalid --max-tokens: "-5", expected an integer >= 1/],
    [["generate", "--max-tokens=0", "x"], /Invalid --max-tokens: "0"/],
    [["generate", "--frobnicate", "x"], /Unknown option: --frobnicate/],
    [["generate", "--temperature", "hot", "x"], /Invalid --temperature: "hot"/],
    [["generate", "--max-tokens"], /Option --max-tokens needs a value/],
    [["info", "--json=yes"], /Option --json takes no value/],
    [["info", "--context-length", "-1"], /Invalid --context-length: "-1"/],
    [["chat", "surplus"], /Unexpected argument: "surplus"/],
    // from the engine: a folder without config.json, a budget below what the policy needs
    [["info", "--model", "src"], /Missing config\.json/],
    [["generate", "--budget", "1KiB", "x"], /Budget too small: 1024 bytes/],
    [["generate", "--profile", "no/such.json", "x"], /Invalid --profile: cannot read no\/such\.json/],
    [["generate", "--profile", "deno.json", "x"], /Invalid --profile: deno\.json holds no "usage" rows/],
    // a profile of another model's shape is the engine's OptionError
    [
      [
        "info",
        "--model",
        "tests/fixtures/tiny-mixtral",
        "--profile",
        "models/sotu-moe-mini/expert_profile.json",
      ],
      /Invalid profile/,
    ],
  ];
  for (const [args, pattern] of cases) {
    await t.step(args.join(" "), async () => assertUsageError(await cli(args), pattern));
  }
  await t.step("an unknown command", async () => {
    const r = await cli(["frobnicate"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr.split("\n")[0]!, /^error: Unknown command: "frobnicate"$/);
    assert.match(r.stderr.split("\n")[1]!, /^hint: "deno run -A main.ts --help" lists the commands$/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
  });
});
