/**
 * Read-only memory maps of whole files, with zero-copy `Uint8Array` views into them.
 *
 * Files must not change in place while mapped. `MAP_PRIVATE` copies nothing until written: a page
 * reads the file's current contents, and a page past a truncated end raises `SIGBUS`, which kills the
 * process (Deno cannot catch it). A file replaced by a rename (how downloads, Hugging Face's included,
 * finish) or deleted is safe: the mapping keeps the old inode. `SafetensorsFile.bytes` stats the file
 * before handing out a view and refuses one changed in place with a `CheckpointError`, which turns the
 * usual case (a model rewritten under a running engine) into a typed error. What remains: a truncation
 * between that check and the read, or a read through a view taken before the truncation, still kills
 * the process (`tests/hostile_test.ts` shows both in a child process). Only copying with `pread`
 * instead of mapping would close that window.
 *
 * @module
 */

import { CheckpointError } from "../src/errors.ts";
import {
  describeErrno,
  isMapFailed,
  libc,
  MADV_DONTNEED,
  MADV_NORMAL,
  MADV_SEQUENTIAL,
  MADV_WILLNEED,
  MAP_PRIVATE,
  O_CLOEXEC,
  O_RDONLY,
  PROT_READ,
  SEEK_END,
} from "./libc.ts";

/** Advice to the kernel about how a range of a mapping will be used (`madvise`). */
export type MappingAdvice = "normal" | "willneed" | "sequential" | "dontneed";

const ADVICE: Record<MappingAdvice, number> = {
  normal: MADV_NORMAL,
  willneed: MADV_WILLNEED,
  sequential: MADV_SEQUENTIAL,
  dontneed: MADV_DONTNEED,
};

/** Options of {@link MappedFile.open}. */
export interface MappedFileOptions {
  /** Ask the kernel to start reading the whole file in (`MADV_WILLNEED`) right after mapping. */
  willNeed?: boolean;
}

let pageSize: number | undefined;

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A whole file mapped read-only (`PROT_READ`, `MAP_PRIVATE`); the file descriptor is closed once mapped.
 *
 * {@link MappedFile.bytes} returns zero-copy views. They are valid only until {@link MappedFile.close}:
 * do not use them after it. (`close` detaches the `ArrayBuffer` behind every view, so a stale view reads
 * as empty rather than touching unmapped memory, but do not rely on that: copy what must outlive the
 * mapping, e.g. with `slice()`.) The views are read-only memory: writing to one kills the process with
 * a segmentation fault. The file must not be truncated while mapped (reading a page past its new end
 * raises `SIGBUS`).
 *
 * A zero-length file is not mapped at all: its `byteLength` is 0 and `bytes(0, 0)` is an empty array.
 *
 * @example
 * ```ts
 * using file = MappedFile.open("model.safetensors");
 * const header = file.bytes(0, 8);
 * ```
 */
export class MappedFile implements Disposable {
  /** The path as given to {@link MappedFile.open}. */
  readonly path: string;
  /** The file's size in bytes, and the length of the mapping. */
  readonly byteLength: number;
  #pointer: Deno.PointerObject | null;
  #buffer: ArrayBuffer | null;
  #closed = false;

  private constructor(path: string, byteLength: number, pointer: Deno.PointerObject | null) {
    this.path = path;
    this.byteLength = byteLength;
    this.#pointer = pointer;
    this.#buffer = null;
  }

  /**
   * Maps the file at `path` (relative paths resolve against the current directory).
   *
   * @throws {CheckpointError} when the file cannot be stat'ed, is not a regular file, changes size
   * while being opened, or cannot be opened or mapped.
   * @throws {SwapMoeError} when libc cannot be loaded (e.g. without `--allow-ffi`).
   */
  static open(path: string, options: MappedFileOptions = {}): MappedFile {
    if (path.includes("\0")) throw new CheckpointError("Invalid path: it contains a NUL character", path);
    let info: Deno.FileInfo;
    try {
      info = Deno.statSync(path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new CheckpointError("File not found", path, { cause: error });
      }
      throw new CheckpointError(`Cannot stat file: ${errorMessage(error)}`, path, { cause: error });
    }
    if (!info.isFile) throw new CheckpointError("Not a regular file", path);

    const lib = libc();
    const fd = lib.open(new TextEncoder().encode(`${path}\0`), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw new CheckpointError(`Cannot open file: ${describeErrno()}`, path);
    let pointer: Deno.PointerObject;
    let size: number;
    try {
      // The size of the file this descriptor refers to, so that the mapping never covers bytes past its end.
      const end = Number(lib.lseek(fd, 0n, SEEK_END));
      if (end < 0) throw new CheckpointError(`Cannot get file size: ${describeErrno()}`, path);
      if (end !== info.size) {
        throw new CheckpointError(
          `File changed while opening: stat gave ${info.size} bytes, the opened file has ${end} bytes`,
          path,
        );
      }
      size = end;
      if (size === 0) return new MappedFile(path, 0, null);
      const mapped = lib.mmap(null, BigInt(size), PROT_READ, MAP_PRIVATE, fd, 0n);
      if (mapped === null || isMapFailed(mapped)) {
        throw new CheckpointError(`Cannot map file: ${describeErrno()}`, path);
      }
      pointer = mapped;
    } finally {
      lib.close(fd);
    }

    const file = new MappedFile(path, size, pointer);
    try {
      file.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, size);
      if (options.willNeed) file.advise(0, size, "willneed");
    } catch (error) {
      file.close();
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointError(`Cannot map file: ${errorMessage(error)}`, path, { cause: error });
    }
    return file;
  }

  /** Whether {@link MappedFile.close} has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  #checkRange(offset: number, length: number): void {
    if (this.#closed) throw new CheckpointError("Mapped file is closed", this.path);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new CheckpointError(
        `Invalid byte range: offset and length must be non-negative integers, got offset ${offset}, length ${length}`,
        this.path,
      );
    }
    if (offset + length > this.byteLength) {
      throw new CheckpointError(
        `Byte range out of bounds: ${length} bytes at offset ${offset} end at byte ${
          offset + length
        }, file is ${this.byteLength} bytes`,
        this.path,
      );
    }
  }

  /**
   * Returns a zero-copy view of `length` bytes at `offset`. Valid until {@link MappedFile.close}; must not
   * be written to (see the class documentation).
   *
   * All views share one `ArrayBuffer` spanning the whole file (one external buffer per tensor would make
   * V8 run a full GC per buffer, for "external memory pressure"), so `view.buffer` is the whole file.
   *
   * @throws {CheckpointError} when the range is not inside the file or the file is closed.
   */
  bytes(offset: number, length: number): Uint8Array<ArrayBuffer> {
    this.#checkRange(offset, length);
    if (this.#pointer === null) return new Uint8Array(0);
    // A consumer may have detached the shared buffer (e.g. by transferring `view.buffer`): make a new one.
    if (this.#buffer === null || this.#buffer.detached) {
      this.#buffer = Deno.UnsafePointerView.getArrayBuffer(this.#pointer, this.byteLength);
    }
    return new Uint8Array(this.#buffer, offset, length);
  }

  /**
   * Tells the kernel how the byte range will be used (`madvise`); the start is rounded down to a page.
   * An empty range does nothing.
   *
   * @throws {CheckpointError} when the range is not inside the file, the file is closed, or `madvise`
   * fails.
   */
  advise(offset: number, length: number, advice: MappingAdvice): void {
    this.#checkRange(offset, length);
    if (!Object.hasOwn(ADVICE, advice)) throw new CheckpointError(`Unknown advice: "${advice}"`, this.path);
    const code = ADVICE[advice];
    if (length === 0 || this.#pointer === null) return;
    const lib = libc();
    pageSize ??= lib.getpagesize();
    const start = offset - (offset % pageSize);
    const address = Deno.UnsafePointer.offset(this.#pointer, start);
    if (lib.madvise(address, BigInt(offset + length - start), code) !== 0) {
      throw new CheckpointError(
        `Cannot advise kernel: madvise ${advice} failed with ${describeErrno()}`,
        this.path,
      );
    }
  }

  /** Unmaps the file; further calls do nothing. Views taken before must not be used afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const pointer = this.#pointer;
    const buffer = this.#buffer;
    this.#pointer = null;
    this.#buffer = null;
    // Detach the shared buffer first: every view of it then has length 0 instead of dangling.
    if (buffer !== null && !buffer.detached) buffer.transfer(0);
    if (pointer !== null && libc().munmap(pointer, BigInt(this.byteLength)) !== 0) {
      throw new CheckpointError(`Cannot unmap file: ${describeErrno()}`, this.path);
    }
  }

  /** Same as {@link MappedFile.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
