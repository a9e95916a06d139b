/**
 * Fuzzing the loader: random mutations of a tiny checkpoint's safetensors headers (bytes and JSON
 * fields), its index and its config.json, from a seeded generator. Every case must either be refused
 * with a typed {@link SwapMoeError} naming a file of the folder, or load and compute: the transformers
 * reference logits when the mutation left the model the same, finite logits when it made another valid
 * model. Never a crash, a hang, an untyped error, garbage, or a file left mapped.
 *
 * Bounded for CI: {@link CASES} cases or {@link TIME_MS} ms, whichever comes first, and at most
 * {@link FULL_LOADS} engines actually created on the GPU; past that budget a case that passes every
 * check before the GPU is counted as valid without being run (the adapter request is refused).
 *
 * Environment: `SWAPMOE_FUZZ_SEED` (default 0x5eed), `SWAPMOE_FUZZ_CASES` (default 300),
 * `SWAPMOE_FUZZ_LOADS` (default 12; with a large value every valid case is run on the GPU),
 * `SWAPMOE_FUZZ_LOG=path` writes one line per case.
 */
import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { CheckpointError, createEngine, type Engine, SwapMoeError, TokenizerError } from "../mod.ts";
import {
  type CausalSpec as ModelSpec,
  parseCausalConfig as parseConfig,
} from "../src/models/causal/config.ts";
import { Checkpoint } from "../src/checkpoint/shards.ts";
import { expectedShapes, modelNames } from "../src/models/causal/names.ts";
import {
  assertLogitsClose,
  copyFixture,
  encodeSafetensors,
  entries,
  mappedUnder,
  readSafetensors,
  referenceLogits,
  spyOnAdapters,
} from "./support/hostile.ts";

const SEED = Number(Deno.env.get("SWAPMOE_FUZZ_SEED") ?? 0x5eed);
const CASES = Number(Deno.env.get("SWAPMOE_FUZZ_CASES") ?? 300);
const TIME_MS = 60_000;
const FULL_LOADS = Number(Deno.env.get("SWAPMOE_FUZZ_LOADS") ?? 12);
const CASE_TIMEOUT_MS = 30_000;

/** mulberry32: a small seeded generator, so that a failing case can be replayed. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

type Json = Record<string, unknown>;
type Fixture = "tiny-olmoe" | "tiny-mixtral";

/** Values no field should accept, and some it might. */
const HOSTILE: unknown[] = [0, -1, -0, 1.5, 1e12, 2 ** 53, 2 ** 64, "7", "", null, true, false, [], [1], {}, {
  a: 1,
}];

/** A nearby value for a number (often still valid), else a hostile one. */
function perturb(rng: Rng, v: unknown): unknown {
  if (typeof v === "number" && rng.next() < 0.6) {
    return rng.pick([v + 1, v - 1, v * 2, Math.floor(v / 2), -v, v + 0.5]);
  }
  return rng.pick(HOSTILE);
}

const shardOf = (fixture: Fixture, rng: Rng) =>
  fixture === "tiny-olmoe"
    ? "model.safetensors"
    : rng.pick(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);

/** JSON text padded with spaces so that the data starts 8-aligned, as safetensors' writers do. */
function padded(text: string): string {
  const n = new TextEncoder().encode(text).length;
  return text + " ".repeat((8 - (n % 8)) % 8);
}

/** Rewrites a shard from a header object, keeping its data (and its alignment). */
function rewrite(path: string, edit: (h: Json, data: Uint8Array) => Uint8Array | void): void {
  const { header, data } = readSafetensors(path);
  const out = edit(header, data);
  Deno.writeFileSync(path, encodeSafetensors(padded(JSON.stringify(header)), out ?? data));
}

interface Mutation {
  kind: string;
  fixture: Fixture;
  /** Applies the mutation in `dir` and describes it. */
  apply(dir: string, rng: Rng): string;
}

const M = (kind: string, fixture: Fixture, apply: Mutation["apply"]): Mutation => ({ kind, fixture, apply });

const MUTATIONS: Mutation[] = [];
for (const fixture of ["tiny-olmoe", "tiny-mixtral"] as const) {
  MUTATIONS.push(
    M("header bytes flipped", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      const bytes = Deno.readFileSync(`${dir}/${name}`);
      const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
      const flips = 1 + rng.int(4);
      const at: number[] = [];
      for (let i = 0; i < flips; i++) {
        const j = rng.next() < 0.1 ? rng.int(8) : 8 + rng.int(n);
        bytes[j] = rng.next() < 0.5 ? bytes[j]! ^ (1 << rng.int(8)) : rng.int(256);
        at.push(j);
      }
      Deno.writeFileSync(`${dir}/${name}`, bytes);
      return `${name}: bytes ${at.join(", ")} changed`;
    }),
    M("header length changed", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      const bytes = Deno.readFileSync(`${dir}/${name}`);
      const view = new DataView(bytes.buffer);
      const n = view.getBigUint64(0, true);
      const next = rng.pick([
        n + 1n,
        n - 1n,
        n + 8n,
        n - 8n,
        0n,
        2n ** 64n - 1n,
        BigInt(bytes.length),
        n * 2n,
      ]);
      view.setBigUint64(0, BigInt.asUintN(64, next), true);
      Deno.writeFileSync(`${dir}/${name}`, bytes);
      return `${name}: header length ${n} → ${BigInt.asUintN(64, next)}`;
    }),
    M("file truncated or extended", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      const size = Deno.statSync(`${dir}/${name}`).size;
      if (rng.next() < 0.7) {
        const to = rng.pick([0, 7, 8, 9, rng.int(size), size - 1, size - 2]);
        Deno.truncateSync(`${dir}/${name}`, Math.max(0, to));
        return `${name}: truncated to ${Math.max(0, to)} of ${size} bytes`;
      }
      const extra = 1 + rng.int(64);
      Deno.writeFileSync(`${dir}/${name}`, new Uint8Array(extra), { append: true });
      return `${name}: ${extra} bytes appended`;
    }),
    M("tensor dtype", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      let what = "";
      rewrite(`${dir}/${name}`, (h) => {
        const [t, e] = rng.pick(entries(h));
        const dtype = rng.pick(["F16", "F32", "BF16", "U8", "I64", "F8_E4M3", "bf16", "Q4_K", "", 16, null]);
        (e as unknown as Json).dtype = dtype;
        what = `${t}.dtype = ${JSON.stringify(dtype)}`;
      });
      return `${name}: ${what}`;
    }),
    M("tensor shape", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      let what = "";
      rewrite(`${dir}/${name}`, (h) => {
        const [t, e] = rng.pick(entries(h));
        const s = [...e.shape];
        const i = rng.int(s.length);
        const shape = rng.pick<unknown>([
          s.toReversed(),
          s.map((d, j) => (j === i ? perturb(rng, d) : d)),
          [...s, 1],
          s.slice(1),
          [s.reduce((a, b) => a * b, 1)],
          [s.reduce((a, b) => a * b, 1) / 2, 2],
          rng.pick(HOSTILE),
        ]);
        (e as unknown as Json).shape = shape;
        what = `${t}.shape [${e.shape}] → ${JSON.stringify(shape)}`;
      });
      return `${name}: ${what}`;
    }),
    M("tensor data_offsets", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      let what = "";
      rewrite(`${dir}/${name}`, (h) => {
        const all = entries(h);
        const [t, e] = rng.pick(all);
        const [b, end] = e.data_offsets;
        const other = rng.pick(all)[1].data_offsets;
        const offsets = rng.pick<unknown>([
          [b + 2, end + 2],
          [b - 2, end - 2],
          [b, end + 2],
          [end, b],
          [...other],
          [b, end, end],
          [b],
          [b, 2 ** 60],
          [-2, end],
          [b + 0.5, end],
          rng.pick(HOSTILE),
        ]);
        (e as unknown as Json).data_offsets = offsets;
        what = `${t}.data_offsets [${b},${end}] → ${JSON.stringify(offsets)}`;
      });
      return `${name}: ${what}`;
    }),
    M("tensor entry removed, renamed or duplicated", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      let what = "";
      rewrite(`${dir}/${name}`, (h) => {
        const [t, e] = rng.pick(entries(h));
        const choice = rng.int(4);
        if (choice === 0) {
          delete h[t];
          what = `${t} removed`;
        } else if (choice === 1) {
          h[`${t}.x`] = e;
          delete h[t];
          what = `${t} renamed`;
        } else if (choice === 2) {
          h[`${t}.copy`] = { ...e };
          what = `${t} duplicated over the same bytes`;
        } else {
          (e as unknown as Json)[rng.pick(["offsets", "quant", "__proto__x"])] = 1;
          what = `${t} gains a key`;
        }
      });
      return `${name}: ${what}`;
    }),
    M("two same-size tensors swap their bytes (a valid, different model)", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      let what = "no pair";
      rewrite(`${dir}/${name}`, (h) => {
        const all = entries(h);
        const [a, ea] = rng.pick(all);
        const same = all.filter(([n, e]) =>
          n !== a && e.data_offsets[1] - e.data_offsets[0] === ea.data_offsets[1] - ea.data_offsets[0] &&
          e.shape.join() === ea.shape.join()
        );
        if (same.length === 0) return;
        const [b, eb] = rng.pick(same);
        [ea.data_offsets, eb.data_offsets] = [eb.data_offsets, ea.data_offsets];
        what = `${a} ⇄ ${b}`;
      });
      return `${name}: ${what}`;
    }),
    M("header re-serialised: keys shuffled, padded (the same model)", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      const { header, data } = readSafetensors(`${dir}/${name}`);
      const keys = Object.keys(header);
      for (let i = keys.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [keys[i], keys[j]] = [keys[j]!, keys[i]!];
      }
      const text = JSON.stringify(Object.fromEntries(keys.map((k) => [k, header[k]])), null, rng.int(3));
      // mostly padded as writers do; sometimes not, leaving the bf16 data at odd offsets
      const aligned = rng.next() < 0.8;
      Deno.writeFileSync(`${dir}/${name}`, encodeSafetensors(aligned ? padded(text) : text + " ", data));
      return `${name}: header keys shuffled${aligned ? "" : ", data unaligned"}`;
    }),
    M("__metadata__", fixture, (dir, rng) => {
      const name = shardOf(fixture, rng);
      const value = rng.pick<unknown>([{ format: "pt", note: "x" }, { format: 1 }, [], "pt", null, {}]);
      rewrite(`${dir}/${name}`, (h) => void (h.__metadata__ = value));
      return `${name}: __metadata__ = ${JSON.stringify(value)}`;
    }),
    M("config.json field", fixture, (dir, rng) => {
      const c: Json = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
      const keys = [
        ...Object.keys(c),
        "head_dim",
        "num_experts",
        "num_local_experts",
        "mlp_only_layers",
        "decoder_sparse_step",
        "rope_scaling",
        "partial_rotary_factor",
        "sliding_window",
        "moe_intermediate_size",
        "clip_qkv",
      ];
      const key = rng.pick(keys);
      const before = c[key];
      let after: unknown;
      if (key === "rope_parameters" && rng.next() < 0.7) {
        const rp = { ...(before as Json) };
        const sub = rng.pick(["rope_theta", "rope_type", "factor"]);
        rp[sub] = sub === "rope_type" ? rng.pick(["default", "yarn", "linear", 3]) : perturb(rng, rp[sub]);
        after = rp;
      } else if (rng.next() < 0.15) after = undefined;
      else after = perturb(rng, before);
      if (after === undefined) delete c[key];
      else c[key] = after;
      Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(c));
      return `config.json: ${key} ${JSON.stringify(before)} → ${
        after === undefined ? "(removed)" : JSON.stringify(after)
      }`;
    }),
    M("config.json neutral change (the same model)", fixture, (dir, rng) => {
      const c: Json = JSON.parse(Deno.readTextFileSync(`${dir}/config.json`));
      const key = rng.pick([
        "transformers_version",
        "initializer_range",
        "router_aux_loss_coef",
        "x_unknown",
      ]);
      c[key] = rng.pick<unknown>(["9.9", 0.5, null, { nested: [1, 2] }]);
      Deno.writeTextFileSync(`${dir}/config.json`, JSON.stringify(c, null, rng.int(4)));
      return `config.json: neutral ${key}`;
    }),
    M("config.json bytes flipped", fixture, (dir, rng) => {
      const bytes = Deno.readFileSync(`${dir}/config.json`);
      const at = rng.int(bytes.length);
      bytes[at] = rng.int(128);
      Deno.writeFileSync(`${dir}/config.json`, bytes);
      return `config.json: byte ${at} changed`;
    }),
  );
}
MUTATIONS.push(
  M("index weight_map entry", "tiny-mixtral", (dir, rng) => {
    const path = `${dir}/model.safetensors.index.json`;
    const j = JSON.parse(Deno.readTextFileSync(path));
    const map = j.weight_map as Json;
    const key = rng.pick(Object.keys(map));
    const value = rng.pick<unknown>([
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "../model-00001-of-00002.safetensors",
      "/etc/passwd",
      "model-00003-of-00002.safetensors",
      "./model-00001-of-00002.safetensors",
      "config.json",
      ".",
      "",
      undefined,
      7,
    ]);
    if (value === undefined) delete map[key];
    else map[key] = value;
    if (rng.next() < 0.2) map["model.ghost.weight"] = "model-00001-of-00002.safetensors";
    Deno.writeTextFileSync(path, JSON.stringify(j));
    return `index: ${key} → ${JSON.stringify(value)}`;
  }),
  M("index bytes flipped", "tiny-mixtral", (dir, rng) => {
    const path = `${dir}/model.safetensors.index.json`;
    const bytes = Deno.readFileSync(path);
    const at = rng.int(bytes.length);
    bytes[at] = rng.int(128);
    Deno.writeFileSync(path, bytes);
    return `index: byte ${at} changed`;
  }),
);

/** The tensors `spec` needs, read from `dir`, as dtype/shape/bytes, for comparing models. */
function needed(dir: string, spec: ModelSpec): Map<string, { head: string; bytes: Uint8Array }> {
  using ckpt = Checkpoint.open(dir);
  const out = new Map<string, { head: string; bytes: Uint8Array }>();
  for (const name of expectedShapes(spec, modelNames(spec)).keys()) {
    const t = ckpt.info(name);
    out.set(name, { head: `${t.dtype}[${t.shape}]`, bytes: ckpt.bytes(name).slice() });
  }
  return out;
}

/** Whether the checkpoint in `dir` is the same model as the fixture: same spec, same needed tensors. */
function sameModel(dir: string, base: { spec: ModelSpec; tensors: ReturnType<typeof needed> }): boolean {
  const spec = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  if (!isDeepStrictEqual(spec, base.spec)) return false;
  const mine = needed(dir, spec);
  for (const [name, t] of base.tensors) {
    const m = mine.get(name);
    if (!m || m.head !== t.head || !isDeepStrictEqual(m.bytes, t.bytes)) return false;
  }
  return true;
}

class ReachedGpu extends Error {}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`Hang: ${what}`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test(`fuzz: ${CASES} mutated checkpoints (seed ${SEED}) load correctly or fail typed`, async () => {
  const rng = new Rng(SEED);
  const base = new Map<Fixture, { spec: ModelSpec; tensors: ReturnType<typeof needed>; dir: string }>();
  for (const f of ["tiny-olmoe", "tiny-mixtral"] as const) {
    const dir = await copyFixture(f);
    const spec = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
    base.set(f, { spec, tensors: needed(dir, spec), dir });
  }
  const reference = new Map<Fixture, ReturnType<typeof referenceLogits>>(
    (["tiny-olmoe", "tiny-mixtral"] as const).map((f) => [f, referenceLogits(base.get(f)!.dir)]),
  );
  const outcomes = new Map<string, number>();
  const count = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
  const log: string[] = [];
  let loads = 0;
  let ran = 0;
  const t0 = performance.now();
  // spread the GPU loads over the run: each valid case is loaded with some chance while budget lasts
  const gate = new Rng(SEED ^ 0x9e3779b9);
  using adapters = spyOnAdapters({
    refuse:
      () => (loads >= FULL_LOADS || (FULL_LOADS < CASES && gate.next() > 0.3) ? new ReachedGpu() : undefined),
  });

  try {
    for (let i = 0; i < CASES && performance.now() - t0 < TIME_MS; i++, ran++) {
      const m = rng.pick(MUTATIONS);
      const b = base.get(m.fixture)!;
      const dir = await copyFixture(m.fixture, await Deno.makeTempDir({ prefix: "swapmoe-fuzz-" }));
      const what = `case ${i} (seed ${SEED}) ${m.fixture}: ${m.apply(dir, rng)}`;
      try {
        const callsBefore = adapters.calls;
        let engine: Engine | undefined;
        let error: unknown;
        try {
          engine = await withTimeout(createEngine({ model: dir }), CASE_TIMEOUT_MS, what);
        } catch (e) {
          error = e;
        }
        if (error instanceof ReachedGpu) {
          count("valid before the GPU (not run: load budget spent)");
          log.push(`${what}\tvalid, not run`);
        } else if (error !== undefined) {
          if (!(error instanceof SwapMoeError)) {
            assert.fail(`${what}: untyped ${(error as Error)?.name}: ${(error as Error)?.message}`);
          }
          assert.ok(error.message.length > 10, `${what}: an empty message`);
          assert.equal(
            adapters.calls,
            callsBefore,
            `${what}: refused after asking for a GPU: ${error.message}`,
          );
          // the message names the folder or a file in it
          if (error instanceof CheckpointError) {
            assert.ok(error.file?.startsWith(dir), `${what}: ${error.message}`);
          }
          if (error instanceof TokenizerError) {
            assert.ok(error.message.includes(dir), `${what}: ${error.message}`);
          }
          count(`refused: ${error.name}`);
          log.push(`${what}\t${error.name}: ${error.message.replaceAll(dir, "<dir>")}`);
        } else {
          loads++;
          await using e = engine!;
          const ref = reference.get(m.fixture)!;
          const same = sameModel(dir, b);
          let logits: Float32Array;
          try {
            logits = await withTimeout(e.forward(ref.ids), CASE_TIMEOUT_MS, what);
          } catch (err) {
            if (!(err instanceof SwapMoeError)) assert.fail(`${what}: forward threw untyped ${err}`);
            count(`loaded, forward refused: ${err.name}`);
            log.push(`${what}\tloaded; forward ${err.name}: ${err.message}`);
            continue;
          }
          if (same) {
            assertLogitsClose(logits, ref.logits, `${what}: logits of the unchanged model`);
            count("loaded: the same model, reference logits");
          } else {
            assert.equal(logits.length, ref.logits.length, what);
            assert.ok(logits.every(Number.isFinite), `${what}: non-finite logits from a valid model`);
            count("loaded: another valid model, finite logits");
          }
          log.push(`${what}\tloaded (${same ? "same model" : "another model"})`);
        }
      } finally {
        assert.deepEqual(mappedUnder(dir), [], `${what}: a file stayed mapped`);
        await Deno.remove(dir, { recursive: true });
      }
    }
  } finally {
    for (const b of base.values()) await Deno.remove(b.dir, { recursive: true });
    const path = Deno.env.get("SWAPMOE_FUZZ_LOG");
    if (path) Deno.writeTextFileSync(path, log.join("\n") + "\n");
  }
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`fuzz: ${ran} cases in ${seconds} s, ${loads} engines loaded`);
  for (const [k, v] of [...outcomes].sort((a, b) => b[1] - a[1])) {
    console.log(`  ${String(v).padStart(4)}  ${k}`);
  }
  assert.ok(ran >= Math.min(CASES, 50), `only ${ran} cases ran in ${seconds} s`);
});
