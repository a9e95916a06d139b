/**
 * The text files of a checkpoint (`config.json`, the shard index, the tokenizer files, the chat
 * template), read with the limits the safetensors shards already have: a regular file (a FIFO would
 * block forever, `/dev/zero` would never end), at most a given size per kind of file, checked on the
 * opened descriptor so that a file swapped between the check and the read is caught too.
 *
 * The file is opened with `O_NONBLOCK`, which regular files ignore and which keeps a FIFO that
 * appears between the `stat` and the `open` from blocking the open.
 *
 * @module
 */
import { closeSync, constants, fstatSync, openSync, promises as fsp, readSync, statSync } from "node:fs";

const MiB = 1 << 20;

/**
 * Most bytes per kind of file, far above what published checkpoints have (a tokenizer.json of a
 * 256k-token vocabulary has some tens of MiB; the other files kilobytes to a few MiB).
 */
export const TEXT_FILE_LIMITS = {
  config: 16 * MiB,
  index: 64 * MiB,
  tokenizer: 128 * MiB,
  tokenizerConfig: 64 * MiB,
  chatTemplate: 4 * MiB,
} as const;

/**
 * Builds the caller's error (ConfigError, CheckpointError, TokenizerError) for a problem with the file;
 * `detail` is lower-case, e.g. "it is a FIFO, not a regular file", for a message such as
 * `Cannot read config.json: ${detail}`.
 */
export type FileFault = (detail: string, cause?: unknown) => Error;

/** The part of a `stat` result that is checked. */
interface Stat {
  size: number | bigint;
  isFile(): boolean;
  isDirectory(): boolean;
  isFIFO(): boolean;
  isCharacterDevice(): boolean;
  isSocket(): boolean;
}

/** What `stat` calls a file that is not a regular one, for messages. */
function kindOf(s: Stat): string {
  if (s.isDirectory()) return "a directory";
  if (s.isFIFO()) return "a FIFO";
  if (s.isCharacterDevice()) return "a character device";
  if (s.isSocket()) return "a socket";
  return "a block device";
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Checks the stat of the opened file; returns its size. */
function checkOpened(s: Stat, limit: number, fault: FileFault): number {
  if (!s.isFile()) throw fault(`it is ${kindOf(s)}, not a regular file`);
  const size = Number(s.size);
  if (size > limit) throw fault(`it has ${size} bytes, more than the limit of ${limit}`);
  return size;
}

/** Before opening: refuse what is not a regular file (following links); `false` when nothing is there. */
function exists(path: string, fault: FileFault): boolean {
  let s;
  try {
    s = statSync(path);
  } catch (e) {
    if ((e as { code?: string }).code === "ENOENT") return false;
    throw fault(message(e), e);
  }
  if (!s.isFile()) throw fault(`it is ${kindOf(s)}, not a regular file`);
  return true;
}

/** UTF-8 text of `bytes` (malformed sequences become U+FFFD, as `Deno.readTextFile` does). */
function decode(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/** Runs one I/O call; its failure becomes `fault(its message)`. */
function io<T>(fault: FileFault, call: () => T): T {
  try {
    return call();
  } catch (e) {
    throw fault(message(e), e);
  }
}

async function ioAsync<T>(fault: FileFault, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw fault(message(e), e);
  }
}

/** The buffer to read a file of `size` bytes into: one byte more than allowed tells a file that grew. */
function bufferFor(size: number, limit: number): Uint8Array {
  return new Uint8Array(Math.min(size, limit) + 1);
}

function grew(limit: number, fault: FileFault): Error {
  return fault(`it grew past the limit of ${limit} bytes while being read`);
}

/**
 * Reads the regular file at `path` as UTF-8 text, refusing anything that is not a regular file or is
 * larger than `limit` bytes (also when it grows while being read). Returns undefined when there is no
 * file; every other problem is thrown as `fault(message)`.
 */
export async function readTextFileLimited(
  path: string,
  limit: number,
  fault: FileFault,
): Promise<string | undefined> {
  if (!exists(path, fault)) return undefined;
  const handle = await ioAsync(fault, () => fsp.open(path, constants.O_RDONLY | constants.O_NONBLOCK));
  try {
    const buf = bufferFor(checkOpened(await ioAsync(fault, () => handle.stat()), limit, fault), limit);
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await ioAsync(fault, () => handle.read(buf, n, buf.length - n, n));
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    if (n > limit) throw grew(limit, fault);
    return decode(buf.subarray(0, n));
  } finally {
    await handle.close().catch(() => {});
  }
}

/** {@link readTextFileLimited}, synchronously. */
export function readTextFileLimitedSync(path: string, limit: number, fault: FileFault): string | undefined {
  if (!exists(path, fault)) return undefined;
  const fd = io(fault, () => openSync(path, constants.O_RDONLY | constants.O_NONBLOCK));
  try {
    const buf = bufferFor(checkOpened(io(fault, () => fstatSync(fd)), limit, fault), limit);
    let n = 0;
    while (n < buf.length) {
      const read = io(fault, () => readSync(fd, buf, n, buf.length - n, n));
      if (read === 0) break;
      n += read;
    }
    if (n > limit) throw grew(limit, fault);
    return decode(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
}
