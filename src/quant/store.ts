/**
 * Quantized copies of a checkpoint's experts, made once and kept: a safetensors file per precision in
 * a cache folder, memory-mapped on later loads like a checkpoint, so that a swap stays a copy from a
 * mapped file to the GPU.
 *
 * - Folder: `$SWAPMOE_CACHE`, else `$XDG_CACHE_HOME/swapmoe`, else `~/.cache/swapmoe` (macOS:
 *   `~/Library/Caches/swapmoe`); files under `quant/`.
 * - Key: the format version, the precision and group size, and the checkpoint's identity (each shard's
 *   name, size, modification time and header); another checkpoint, a changed one, or a new format
 *   version gets another file.
 * - One tensor per expert, `l{layer}.e{expert}`, U8: its matrices in slot order, each in its
 *   precision's layout (src/quant/formats.ts).
 * - Checked when opened: the metadata (version, key, precision), every tensor's name and size, and a
 *   sample hash of each tensor's first and last bytes recorded when it was written. A file that fails
 *   is deleted and built again, never used. A file is written under a temporary name and renamed when
 *   complete, so a crash leaves no half-written file behind.
 * - When the folder cannot be written (read-only, full), the copies are quantized into memory, with a
 *   warning.
 *
 * Quantizing runs on worker threads (one per core, up to 8) for large checkpoints.
 *
 * @module
 */
import { join } from "node:path";
import { homedir } from "node:os";
import { SafetensorsFile } from "../checkpoint/safetensors.ts";
import type { ExpertMatrix, TensorPiece } from "../models/family.ts";
import type { ExpertStore, Piece } from "../moe/expert_cache.ts";
import { matrixLayout, type Precision, quantizeMatrix } from "./formats.ts";

/** The cache format's version: a change of layout or key makes a new file. */
export const QUANT_FORMAT_VERSION = "swapmoe-quant-1";

/** The cache folder: `$SWAPMOE_CACHE`, else the per-user cache folder's `swapmoe`. */
export function quantCacheDir(): string {
  const env = Deno.env.get("SWAPMOE_CACHE");
  if (env) return env;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "swapmoe");
  const home = homedir();
  return Deno.build.os === "darwin"
    ? join(home, "Library", "Caches", "swapmoe")
    : join(home, ".cache", "swapmoe");
}

/** What the quantized copies are made from. */
export interface QuantSource {
  /** The checkpoint's shard files (their identity keys the cache). */
  readonly files: readonly string[];
  readonly moeLayers: number;
  readonly experts: number;
  readonly matrices: readonly ExpertMatrix[];
  /** Where each stored (bf16) matrix is. */
  pieces(l: number, e: number, m: number): readonly TensorPiece[];
  /** A tensor's bytes (zero-copy from the mapping). */
  bytes(tensor: string): Uint8Array<ArrayBuffer>;
}

/** Progress of quantizing, in bytes of bf16 read. */
export interface QuantProgress {
  precision: Precision;
  bytes: number;
  totalBytes: number;
}

/** Quantized copies at one or more precisions, and how they were had. */
export interface QuantStore extends ExpertStore, Disposable {
  /** Per precision: `"cache"` (an existing file, mapped), `"built"` (quantized now, written, mapped) or `"memory"` (quantized now, kept in memory: the folder could not be written). */
  readonly source: Readonly<Partial<Record<Precision, "cache" | "built" | "memory">>>;
  /** Seconds spent quantizing in this call (0 when every copy came from the cache). */
  readonly quantizeSeconds: number;
}

/** The cache key of `source` at `precision`: a hex sha256. */
export async function quantKey(source: QuantSource, precision: Precision): Promise<string> {
  const shards = await Promise.all(source.files.map(async (f) => {
    const stat = await Deno.stat(f);
    const head = await readHeader(f);
    return {
      name: f.split("/").pop(),
      size: stat.size,
      mtime: stat.mtime?.getTime() ?? 0,
      header: await sha256(head),
    };
  }));
  const text = JSON.stringify({ version: QUANT_FORMAT_VERSION, precision, group: 32, shards });
  return await sha256(new TextEncoder().encode(text));
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A safetensors file's length prefix and header. */
async function readHeader(path: string): Promise<Uint8Array<ArrayBuffer>> {
  using f = await Deno.open(path);
  const len = new Uint8Array(8);
  await readFull(f, len);
  const n = Number(new DataView(len.buffer).getBigUint64(0, true));
  const head = new Uint8Array(8 + Math.min(n, 100_000_000));
  head.set(len);
  await readFull(f, head.subarray(8));
  return head;
}

async function readFull(f: Deno.FsFile, into: Uint8Array): Promise<void> {
  let at = 0;
  while (at < into.byteLength) {
    const n = await f.read(into.subarray(at));
    if (n === null) throw new Error("Unexpected end of file");
    at += n;
  }
}

/** FNV-1a over the first and last 256 bytes: a cheap check that a tensor holds what was written. */
function sampleHash(b: Uint8Array): string {
  let h = 0x811c9dc5;
  const take = (from: number, to: number) => {
    for (let i = from; i < to; i++) h = Math.imul(h ^ b[i]!, 0x01000193) >>> 0;
  };
  take(0, Math.min(256, b.byteLength));
  take(Math.max(0, b.byteLength - 256), b.byteLength);
  return h.toString(16).padStart(8, "0");
}

/** Bytes of one expert's copy at `p`, and where each matrix starts in it. */
function copyLayout(matrices: readonly ExpertMatrix[], p: Precision): { bytes: number; starts: number[] } {
  const starts: number[] = [];
  let bytes = 0;
  for (const m of matrices) {
    starts.push(bytes);
    bytes += matrixLayout(p, m.rows, m.cols, m.bias).bytes;
  }
  return { bytes, starts };
}

/** One expert quantized to `p` from its stored bf16 matrices: its copy's bytes. */
function quantizeExpert(source: QuantSource, l: number, e: number, p: Precision): Uint8Array<ArrayBuffer> {
  const { bytes, starts } = copyLayout(source.matrices, p);
  const out = new Uint8Array(bytes);
  source.matrices.forEach((m, i) => {
    const [piece] = source.pieces(l, e, i);
    if (!piece || piece.at !== 0) throw new Error("Internal: only whole bf16 matrices are quantized");
    const bf16 = source.bytes(piece.tensor).subarray(piece.offset, piece.offset + piece.bytes);
    out.set(quantizeMatrix(p, bf16, m.rows, m.cols), starts[i]!);
  });
  return out;
}

const TENSOR = (l: number, e: number) => `l${l}.e${e}`;

/**
 * The quantized copies of `source`'s experts at each of `precisions`: from the cache when a valid file
 * is there, else quantized now (and written to the cache when it can be). `cacheDir` null keeps them
 * in memory only.
 */
export async function openQuantStore(
  source: QuantSource,
  precisions: readonly Precision[],
  o: { cacheDir?: string | null; onProgress?: (p: QuantProgress) => void } = {},
): Promise<QuantStore> {
  const dir = o.cacheDir === undefined ? quantCacheDir() : o.cacheDir;
  const files = new Map<Precision, SafetensorsFile>();
  const memory = new Map<Precision, Uint8Array<ArrayBuffer>[]>();
  const how: Partial<Record<Precision, "cache" | "built" | "memory">> = {};
  let seconds = 0;
  try {
    for (const p of precisions) {
      const key = await quantKey(source, p);
      const path = dir === null ? undefined : join(dir, "quant", `${key}.${p}.safetensors`);
      const cached = path ? openValid(path, source, p, key) : undefined;
      if (cached) {
        files.set(p, cached);
        how[p] = "cache";
        continue;
      }
      const t0 = performance.now();
      const written = path ? await buildCache(path, source, p, key, o.onProgress) : false;
      if (written) {
        files.set(p, SafetensorsFile.open(path!));
        how[p] = "built";
      } else {
        const copies: Uint8Array<ArrayBuffer>[] = [];
        await quantizeAll(source, p, (i, c) => void (copies[i] = c), o.onProgress);
        memory.set(p, copies);
        how[p] = "memory";
      }
      seconds += (performance.now() - t0) / 1000;
    }
  } catch (e) {
    for (const f of files.values()) f.close();
    throw e;
  }
  const layouts = new Map(precisions.map((p) => [p, copyLayout(source.matrices, p)]));
  return {
    source: how,
    quantizeSeconds: seconds,
    expert(l, e, p): readonly (readonly Piece[])[] {
      const layout = layouts.get(p);
      if (!layout) throw new RangeError(`No ${p} copies of the experts were made`);
      const copy = files.get(p)?.bytes(TENSOR(l, e)) ?? memory.get(p)?.[l * source.experts + e];
      if (!copy) throw new RangeError(`No expert ${e} in MoE layer ${l}`);
      return source.matrices.map((m, i) => [{
        at: 0,
        bytes: copy.subarray(
          layout.starts[i]!,
          layout.starts[i]! + matrixLayout(p, m.rows, m.cols, m.bias).bytes,
        ),
      }]);
    },
    [Symbol.dispose]() {
      for (const f of files.values()) f.close();
      files.clear();
      memory.clear();
    },
  };
}

/** The cache file at `path` when it is complete and made from `source` at `p`; otherwise deletes it. */
function openValid(
  path: string,
  source: QuantSource,
  p: Precision,
  key: string,
): SafetensorsFile | undefined {
  let file: SafetensorsFile;
  try {
    file = SafetensorsFile.open(path);
  } catch {
    removeQuietly(path); // absent, truncated or not safetensors: built again
    return undefined;
  }
  const { bytes } = copyLayout(source.matrices, p);
  const m = file.metadata;
  let ok = m.format === QUANT_FORMAT_VERSION && m.key === key && m.precision === p &&
    file.tensors.size === source.moeLayers * source.experts;
  let hashes: Record<string, string> = {};
  try {
    hashes = JSON.parse(m.samples ?? "{}");
  } catch {
    ok = false;
  }
  for (let l = 0; ok && l < source.moeLayers; l++) {
    for (let e = 0; ok && e < source.experts; e++) {
      const t = file.tensors.get(TENSOR(l, e));
      ok = t !== undefined && t.dtype === "U8" && t.byteLength === bytes &&
        sampleHash(file.bytes(TENSOR(l, e))) === hashes[TENSOR(l, e)];
    }
  }
  if (ok) return file;
  file.close();
  removeQuietly(path);
  return undefined;
}

function removeQuietly(path: string): void {
  try {
    Deno.removeSync(path);
  } catch { /* absent, or not ours to remove */ }
}

/**
 * Every expert of `source` quantized to `p`, handed to `sink` with its index (layer · E + expert) as
 * it is done, in any order; on worker threads when there is much to do.
 */
async function quantizeAll(
  source: QuantSource,
  p: Precision,
  sink: (i: number, copy: Uint8Array<ArrayBuffer>) => void | Promise<void>,
  onProgress?: (q: QuantProgress) => void,
): Promise<void> {
  const n = source.moeLayers * source.experts;
  const perExpert = source.matrices.reduce((a, m) => a + m.rows * m.cols * 2, 0);
  const totalBytes = n * perExpert;
  let done = 0;
  const report = () => onProgress?.({ precision: p, bytes: done * perExpert, totalBytes });
  const threads = Math.min(8, navigator.hardwareConcurrency ?? 1);
  if (totalBytes < 64 * 2 ** 20 || threads < 2) {
    for (let i = 0; i < n; i++) {
      await sink(i, quantizeExpert(source, Math.floor(i / source.experts), i % source.experts, p));
      done++;
      if (done % 64 === 0 || done === n) report();
    }
    return;
  }
  const workers = Array.from(
    { length: threads },
    () => new Worker(new URL("./quant_worker.ts", import.meta.url), { type: "module" }),
  );
  try {
    let next = 0;
    await Promise.all(workers.map((w) =>
      new Promise<void>((resolve, reject) => {
        const send = () => {
          if (next >= n) return resolve();
          const i = next++;
          const l = Math.floor(i / source.experts);
          const e = i % source.experts;
          const matrices = source.matrices.map((m, k) => {
            const [piece] = source.pieces(l, e, k);
            return {
              rows: m.rows,
              cols: m.cols,
              bf16: source.bytes(piece!.tensor).slice(piece!.offset, piece!.offset + piece!.bytes),
            };
          });
          w.postMessage({ i, precision: p, matrices }, matrices.map((m) => m.bf16.buffer));
        };
        w.onmessage = async (ev: MessageEvent<{ i: number; copy: Uint8Array<ArrayBuffer> }>) => {
          try {
            await sink(ev.data.i, ev.data.copy);
          } catch (e) {
            return reject(e);
          }
          done++;
          if (done % 16 === 0 || done === n) report();
          send();
        };
        w.onerror = (ev) => {
          ev.preventDefault();
          reject(new Error(`Quantizing worker failed: ${ev.message}`));
        };
        send();
      })
    ));
  } finally {
    workers.forEach((w) => w.terminate());
  }
}

/**
 * Quantizes `source` to `p` straight into the cache file at `path`: the header first (with room for
 * the sample hashes), each copy at its offset as it is done, then the header again with the hashes;
 * written under a temporary name and renamed when complete. False, with a warning, when the folder
 * cannot be written (the caller then quantizes into memory).
 */
async function buildCache(
  path: string,
  source: QuantSource,
  p: Precision,
  key: string,
  onProgress?: (q: QuantProgress) => void,
): Promise<boolean> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  const n = source.moeLayers * source.experts;
  const { bytes } = copyLayout(source.matrices, p);
  const header = (samples: Record<string, string>) => {
    const h: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      h[TENSOR(Math.floor(i / source.experts), i % source.experts)] = {
        dtype: "U8",
        shape: [bytes],
        data_offsets: [i * bytes, (i + 1) * bytes],
      };
    }
    h.__metadata__ = { format: QUANT_FORMAT_VERSION, key, precision: p, samples: JSON.stringify(samples) };
    let json = JSON.stringify(h);
    json += " ".repeat((8 - (json.length % 8)) % 8); // data 8-aligned, as safetensors writers do
    const head = new TextEncoder().encode(json);
    const out = new Uint8Array(8 + head.byteLength);
    new DataView(out.buffer).setBigUint64(0, BigInt(head.byteLength), true);
    out.set(head, 8);
    return out;
  };
  const samples: Record<string, string> = {};
  for (let i = 0; i < n; i++) {
    samples[TENSOR(Math.floor(i / source.experts), i % source.experts)] = "00000000";
  }
  const placeholder = header(samples);
  let f: Deno.FsFile | undefined;
  try {
    await Deno.mkdir(join(path, ".."), { recursive: true });
    f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    const file = f;
    await writeAll(file, placeholder);
    let writing = Promise.resolve();
    await quantizeAll(source, p, (i, copy) => {
      samples[TENSOR(Math.floor(i / source.experts), i % source.experts)] = sampleHash(copy);
      // one write at a time, each at its own offset
      writing = writing.then(async () => {
        await file.seek(placeholder.byteLength + i * bytes, Deno.SeekMode.Start);
        await writeAll(file, copy);
      });
      return writing;
    }, onProgress);
    await writing;
    const final = header(samples);
    if (final.byteLength !== placeholder.byteLength) throw new Error("Internal: cache header changed length");
    await file.seek(0, Deno.SeekMode.Start);
    await writeAll(file, final);
    await file.sync();
    file.close();
    f = undefined;
    await Deno.rename(tmp, path);
    return true;
  } catch (e) {
    f?.close();
    removeQuietly(tmp);
    console.warn(
      `swapmoe: cannot write the quantized-expert cache (${
        (e as Error).message
      }): the ${p} copies are kept in memory this time; set SWAPMOE_CACHE to a writable folder to keep them`,
    );
    return false;
  }
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let b = bytes;
  while (b.byteLength > 0) b = b.subarray(await f.write(b));
}
