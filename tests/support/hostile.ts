/**
 * Helpers of the reliability tests: copies of the tiny fixtures to corrupt, a safetensors reader and
 * writer that keeps the data section, a spy on WebGPU adapter requests, the process's live file
 * mappings, and the transformers reference logits.
 *
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { Engine } from "../../mod.ts";
import { SafetensorsFile } from "../../src/checkpoint/safetensors.ts";

/** The fixtures folder, as a path ending in `/`. */
export const FIXTURES = fileURLToPath(new URL("../fixtures/", import.meta.url));

/** The four causal tiny checkpoints. */
export const MODELS = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"] as const;

/** Copies fixture `name` into a new temporary folder and returns the folder. */
export async function copyFixture(name: string, into?: string): Promise<string> {
  const dir = into ?? await Deno.makeTempDir({ prefix: `swapmoe-${name}-` });
  for await (const e of Deno.readDir(`${FIXTURES}${name}`)) {
    if (e.isFile) await Deno.copyFile(`${FIXTURES}${name}/${e.name}`, `${dir}/${e.name}`);
  }
  return dir;
}

/** A safetensors file taken apart: the parsed header and the raw data section. */
export interface RawSafetensors {
  header: Record<string, unknown>;
  data: Uint8Array;
}

/** Reads a safetensors file without validating it (the fixture is known good). */
export function readSafetensors(path: string): RawSafetensors {
  const bytes = Deno.readFileSync(path);
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  return { header, data: bytes.slice(8 + n) };
}

/**
 * Builds safetensors bytes from a header (an object, padded as writers do, or raw text/bytes as given),
 * the data, and an optional lying length.
 */
export function encodeSafetensors(
  header: Record<string, unknown> | string | Uint8Array,
  data: Uint8Array,
  headerLength?: bigint,
): Uint8Array {
  let h = header instanceof Uint8Array
    ? header
    : new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  if (typeof header === "object" && !(header instanceof Uint8Array) && h.length % 8 !== 0) {
    // an object is written as safetensors' writers do: padded with spaces so the data is 8-aligned
    const padded = new Uint8Array(Math.ceil(h.length / 8) * 8).fill(0x20);
    padded.set(h);
    h = padded;
  }
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** Rewrites `path`'s header with `edit` (which may mutate it or return a new one), keeping the data. */
export function editHeader(
  path: string,
  edit: (header: Record<string, unknown>, data: Uint8Array) => Record<string, unknown> | void,
): void {
  const { header, data } = readSafetensors(path);
  const next = edit(header, data) ?? header;
  Deno.writeFileSync(path, encodeSafetensors(next, data));
}

/** One tensor entry of a parsed header, typed loosely. */
export interface Entry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** The tensor entries of a header in offset order (without `__metadata__`). */
export function entries(header: Record<string, unknown>): [string, Entry][] {
  return Object.entries(header)
    .filter(([k]) => k !== "__metadata__")
    .map(([k, v]) => [k, v as Entry] as [string, Entry])
    .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
}

/** Reads, edits and writes a JSON file. */
export function editJson(
  path: string,
  edit: (json: Record<string, unknown>) => Record<string, unknown> | void,
): void {
  const json = JSON.parse(Deno.readTextFileSync(path));
  Deno.writeTextFileSync(path, JSON.stringify(edit(json) ?? json, null, 2));
}

/**
 * Counts `navigator.gpu.requestAdapter` calls and keeps every device created through them, until
 * disposed: a checkpoint refused before any GPU work never asks for an adapter, and a test can destroy
 * an engine's device (as a driver reset would) without a hook in the engine.
 */
export function spyOnAdapters(
  spy: {
    /** Called on each request: an error to throw instead of asking for an adapter (a GPU-free run). */
    refuse?: () => Error | undefined;
  } = {},
): { readonly calls: number; readonly devices: GPUDevice[] } & Disposable {
  const gpu = navigator.gpu;
  const original = gpu.requestAdapter;
  let calls = 0;
  const devices: GPUDevice[] = [];
  Object.defineProperty(gpu, "requestAdapter", {
    configurable: true,
    writable: true,
    value: async function (this: GPU, options?: GPURequestAdapterOptions) {
      calls++;
      const refusal = spy.refuse?.();
      if (refusal) throw refusal;
      const adapter = await original.call(this, options);
      if (adapter) {
        const requestDevice = adapter.requestDevice;
        Object.defineProperty(adapter, "requestDevice", {
          value: async function (this: GPUAdapter, descriptor?: GPUDeviceDescriptor) {
            const device = await requestDevice.call(this, descriptor);
            devices.push(device);
            return device;
          },
        });
      }
      return adapter;
    },
  });
  return {
    get calls() {
      return calls;
    },
    devices,
    [Symbol.dispose]() {
      delete (gpu as unknown as Record<string, unknown>).requestAdapter;
    },
  };
}

/** Files under `dir` that this process has memory-mapped now (from `/proc/self/maps`). */
export function mappedUnder(dir: string): string[] {
  const real = Deno.realPathSync(dir);
  return Deno.readTextFileSync("/proc/self/maps")
    .split("\n")
    .map((line) => line.split(/\s+/).slice(5).join(" "))
    .filter((path) => path.startsWith(`${real}/`) || path.startsWith(`${dir}/`));
}

/** What reference.json holds (the parts these tests use). */
export interface Reference {
  prompts: { ids: number[] }[];
}

/** The first prompt's ids and transformers' logits for them (copied out of the mapping). */
export function referenceLogits(dir: string): { ids: number[]; logits: Float32Array } {
  const ref: Reference = JSON.parse(Deno.readTextFileSync(`${dir}/reference.json`));
  using file = SafetensorsFile.open(`${dir}/reference.safetensors`);
  const b = file.bytes("p0.logits");
  return { ids: ref.prompts[0]!.ids, logits: new Float32Array(b.slice().buffer) };
}

/** Largest |a − b| against the tolerance 1e-3 × max(1, max|b|), as the parity test does. */
export function assertLogitsClose(actual: Float32Array, expected: Float32Array, what = "logits"): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let err = 0;
  let max = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    if (!Number.isFinite(a)) assert.fail(`${what}: non-finite logit ${a} at ${i}`);
    err = Math.max(err, Math.abs(a - expected[i]!));
    max = Math.max(max, Math.abs(expected[i]!));
  }
  const tol = 1e-3 * Math.max(1, max);
  assert.ok(err <= tol, `${what}: max logit error ${err} > ${tol}`);
}

/** Drains a generation into its ids (sync throws of `generate` become rejections). */
export async function drain(engine: Engine, request: Parameters<Engine["generate"]>[0]): Promise<number[]> {
  const ids: number[] = [];
  for await (const c of engine.generate(request)) ids.push(...c.ids);
  return ids;
}

/** Asserts `fn` rejects with an instance of `cls` whose message contains every one of `parts`. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  cls: new (...args: any[]) => E,
  ...parts: (string | RegExp)[]
): Promise<E> {
  let error: unknown;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  if (error === undefined) assert.fail(`expected ${cls.name}, but nothing was thrown`);
  if (!(error instanceof cls)) {
    assert.fail(`expected ${cls.name}, got ${(error as Error)?.name}: ${(error as Error)?.message}`);
  }
  for (const p of parts) {
    if (typeof p === "string") assert.ok(error.message.includes(p), `"${error.message}" lacks "${p}"`);
    else assert.match(error.message, p);
  }
  return error;
}

/** `p`, or a failure naming `what` when it has not settled within `ms`: a regression fails rather than hangs. */
export async function within<T>(p: Promise<T>, what: string, ms = 60_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
