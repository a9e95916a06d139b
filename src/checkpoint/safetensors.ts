/**
 * The safetensors format: an 8-byte little-endian header length, a UTF-8 JSON header, then the tensor
 * data. {@link parseSafetensorsHeader} validates a header completely; {@link SafetensorsFile} maps a
 * file and hands out zero-copy views of its tensors.
 *
 * @module
 */

import { CheckpointError } from "../errors.ts";
import { MappedFile, type MappedFileOptions, type MappingAdvice } from "../../ffi/mmap.ts";

/** The element types of the safetensors format that swapmoe accepts. */
export type DType =
  | "BOOL"
  | "U8"
  | "I8"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "F64"
  | "I64"
  | "U64"
  | "F8_E4M3"
  | "F8_E5M2";

/** Bytes per element of each {@link DType}. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
  F8_E4M3: 1,
  F8_E5M2: 1,
});

/** Where one tensor lives. The objects handed out are frozen. */
export interface TensorInfo {
  /** The tensor's name, e.g. `model.layers.0.mlp.gate.weight`. */
  name: string;
  /** The element type. */
  dtype: DType;
  /** The dimensions, outermost first; `[]` for a scalar. */
  shape: number[];
  /** The path of the file (shard) holding the data. */
  file: string;
  /** Absolute offset of the first byte in `file`. */
  byteOffset: number;
  /** Length of the data in bytes: product of `shape` times the dtype's size. */
  byteLength: number;
}

/** What {@link parseSafetensorsHeader} returns. */
export interface SafetensorsHeader {
  /** The tensors, sorted by offset. */
  tensors: TensorInfo[];
  /** The `__metadata__` strings (an object without prototype; empty when absent). */
  metadata: Record<string, string>;
  /** Absolute offset of the data section (8 plus the header length). */
  dataStart: number;
}

/** The largest header accepted, in bytes (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

const TENSOR_KEYS = ["dtype", "shape", "data_offsets"] as const;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function quote(name: string): string {
  return JSON.stringify(name);
}

function describe(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * Parses and validates a safetensors header. `bytes` holds the start of the file, at least the 8-byte
 * length and the header; `fileSize` is the size of the whole file.
 *
 * Validates completely: the header length is at most {@link MAX_HEADER_BYTES} and inside the file; the
 * header is UTF-8 JSON starting with `{`; `__metadata__`, when present, maps strings to strings; every
 * tensor entry has exactly `dtype` (a known {@link DType}), `shape` (non-negative integers) and
 * `data_offsets` (`[begin, end]`, integers, `begin <= end <= ` data size) whose span equals the shape's
 * element count times the dtype's size; and the tensors, sorted by offset, cover the data section exactly
 * once, without overlap, gap or trailing bytes.
 *
 * @throws {CheckpointError} naming `file` (and the tensor at fault) when anything is wrong.
 */
export function parseSafetensorsHeader(bytes: Uint8Array, fileSize: number, file: string): SafetensorsHeader {
  if (!Number.isSafeInteger(fileSize) || fileSize < 0) {
    throw new CheckpointError(`Invalid file size: ${fileSize}`, file);
  }
  if (fileSize < 8) {
    throw new CheckpointError(
      `File too small for a safetensors header: ${fileSize} bytes, need at least 8`,
      file,
    );
  }
  if (bytes.length < 8) {
    throw new CheckpointError(`Header bytes missing: got ${bytes.length} bytes, need at least 8`, file);
  }
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(
      `Header length too large: ${headerLength} bytes, the limit is ${MAX_HEADER_BYTES}`,
      file,
    );
  }
  const dataStart = 8 + Number(headerLength);
  if (dataStart > fileSize) {
    throw new CheckpointError(
      `Header extends past end of file: it ends at byte ${dataStart}, file is ${fileSize} bytes`,
      file,
    );
  }
  if (bytes.length < dataStart) {
    throw new CheckpointError(
      `Header bytes missing: header ends at byte ${dataStart}, got ${bytes.length} bytes`,
      file,
    );
  }
  const dataSize = fileSize - dataStart;

  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, dataStart));
  } catch (error) {
    throw new CheckpointError("Header is not valid UTF-8", file, { cause: error });
  }
  if (!text.startsWith("{")) {
    throw new CheckpointError(`Header is not a JSON object: it must start with "{"`, file);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    throw new CheckpointError(`Header is not valid JSON: ${detail}`, file, { cause: error });
  }
  if (!isPlainObject(json)) {
    throw new CheckpointError(`Header is not a JSON object: got ${typeName(json)}`, file);
  }

  const metadata: Record<string, string> = Object.create(null);
  const tensors: TensorInfo[] = [];
  const ranges: { name: string; begin: number; end: number }[] = [];

  for (const [name, entry] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (!isPlainObject(entry)) {
        throw new CheckpointError(`Invalid __metadata__: expected an object, got ${typeName(entry)}`, file);
      }
      for (const [key, value] of Object.entries(entry)) {
        if (typeof value !== "string") {
          throw new CheckpointError(
            `Invalid __metadata__: ${quote(key)} must be a string, got ${typeName(value)}`,
            file,
          );
        }
        metadata[key] = value;
      }
      continue;
    }

    if (!isPlainObject(entry)) {
      throw new CheckpointError(
        `Invalid tensor entry: ${quote(name)} must be an object, got ${typeName(entry)}`,
        file,
      );
    }
    for (const key of Object.keys(entry)) {
      if (!(TENSOR_KEYS as readonly string[]).includes(key)) {
        throw new CheckpointError(
          `Unknown key in tensor entry: ${quote(name)} has ${
            quote(key)
          }, expected only dtype, shape and data_offsets`,
          file,
        );
      }
    }
    for (const key of TENSOR_KEYS) {
      if (!Object.hasOwn(entry, key)) {
        throw new CheckpointError(`Missing key in tensor entry: ${quote(name)} has no ${quote(key)}`, file);
      }
    }

    const dtype = entry.dtype;
    if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_BYTES, dtype)) {
      throw new CheckpointError(
        `Unknown dtype: ${quote(name)} has dtype ${describe(dtype)}, expected one of ${
          Object.keys(DTYPE_BYTES).join(", ")
        }`,
        file,
      );
    }
    const elementBytes = DTYPE_BYTES[dtype as DType];

    const rawShape = entry.shape;
    if (
      !Array.isArray(rawShape) ||
      !rawShape.every((dim) => typeof dim === "number" && Number.isSafeInteger(dim) && dim >= 0)
    ) {
      throw new CheckpointError(
        `Invalid shape: ${quote(name)} has shape ${
          describe(rawShape)
        }, expected an array of non-negative integers`,
        file,
      );
    }
    const shape = (rawShape as number[]).map((dim) => dim === 0 ? 0 : dim); // -0 becomes 0

    const offsets = entry.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => typeof o === "number" && Number.isSafeInteger(o) && o >= 0) ||
      (offsets[0] as number) > (offsets[1] as number)
    ) {
      throw new CheckpointError(
        `Invalid data_offsets: ${quote(name)} has ${
          describe(offsets)
        }, expected [begin, end], integers with 0 <= begin <= end`,
        file,
      );
    }
    const begin = offsets[0] as number;
    const end = offsets[1] as number;
    if (end > dataSize) {
      throw new CheckpointError(
        `Tensor data out of bounds: ${
          quote(name)
        } ends at data offset ${end}, data section is ${dataSize} bytes`,
        file,
      );
    }

    const expected = shape.reduce((product, dim) => product * BigInt(dim), BigInt(elementBytes));
    if (expected !== BigInt(end - begin)) {
      throw new CheckpointError(
        `Tensor size mismatch: ${quote(name)} is ${dtype} [${
          shape.join(", ")
        }], ${expected} bytes, but data_offsets span ${end - begin} bytes`,
        file,
      );
    }

    tensors.push(Object.freeze({
      name,
      dtype: dtype as DType,
      shape: Object.freeze(shape) as number[],
      file,
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    }));
    ranges.push({ name, begin, end });
  }

  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: { name: string; begin: number; end: number } | undefined;
  for (const range of ranges) {
    if (range.begin < covered && previous) {
      throw new CheckpointError(
        `Overlapping tensors: ${quote(range.name)} starts at data offset ${range.begin}, inside ${
          quote(previous.name)
        } (data offsets ${previous.begin}..${previous.end})`,
        file,
      );
    }
    if (range.begin > covered) {
      throw new CheckpointError(
        `Gap in tensor data: data offsets ${covered}..${range.begin} belong to no tensor (before ${
          quote(range.name)
        })`,
        file,
      );
    }
    covered = range.end;
    previous = range;
  }
  if (covered !== dataSize) {
    throw new CheckpointError(
      `Unused bytes after tensor data: tensors end at data offset ${covered}, data section is ${dataSize} bytes`,
      file,
    );
  }

  tensors.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  return { tensors, metadata, dataStart };
}

/**
 * A memory-mapped, validated safetensors file.
 *
 * Views from {@link SafetensorsFile.bytes} are zero-copy and read-only: they must not be used after
 * {@link SafetensorsFile.close}, nor written to (see {@link MappedFile}).
 *
 * @example
 * ```ts
 * using file = SafetensorsFile.open("model.safetensors");
 * const norm = file.bytes("model.norm.weight");
 * ```
 */
export class SafetensorsFile implements Disposable {
  /** The path as given to {@link SafetensorsFile.open}. */
  readonly path: string;
  /** The file size in bytes. */
  readonly byteLength: number;
  /** Absolute offset of the data section. */
  readonly dataStart: number;
  /** The `__metadata__` strings. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Every tensor by name, in offset order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  #file: MappedFile;
  /** Identity of the file as mapped: inode and modification time. */
  #ino: number | null;
  #mtime: number | undefined;

  private constructor(file: MappedFile, header: SafetensorsHeader, stat: Deno.FileInfo) {
    this.#file = file;
    this.#ino = stat.ino;
    this.#mtime = stat.mtime?.getTime();
    this.path = file.path;
    this.byteLength = file.byteLength;
    this.dataStart = header.dataStart;
    this.metadata = Object.freeze(header.metadata);
    this.tensors = new Map(header.tensors.map((info) => [info.name, info]));
  }

  /**
   * Maps and validates the file at `path`.
   *
   * @throws {CheckpointError} when the file cannot be mapped or its header is invalid (see
   * {@link parseSafetensorsHeader}).
   */
  static open(path: string, options: MappedFileOptions = {}): SafetensorsFile {
    const file = MappedFile.open(path, options);
    try {
      return new SafetensorsFile(
        file,
        parseSafetensorsHeader(file.bytes(0, file.byteLength), file.byteLength, path),
        Deno.statSync(path),
      );
    } catch (error) {
      file.close();
      throw error;
    }
  }

  /** Whether {@link SafetensorsFile.close} has been called. */
  get closed(): boolean {
    return this.#file.closed;
  }

  /** Whether the file holds tensor `name`. */
  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /**
   * Returns where tensor `name` lives.
   *
   * @throws {CheckpointError} when the file has no such tensor.
   */
  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new CheckpointError(`Missing tensor: ${quote(name)}`, this.path);
    return info;
  }

  /**
   * Returns a zero-copy view of tensor `name`'s bytes, valid until {@link SafetensorsFile.close}.
   *
   * @throws {CheckpointError} when the file has no such tensor or is closed.
   */
  bytes(name: string): Uint8Array<ArrayBuffer> {
    const info = this.info(name);
    this.#checkUnchanged();
    return this.#file.bytes(info.byteOffset, info.byteLength);
  }

  /**
   * Refuses to read a file changed in place since it was mapped: reading a page past a truncated end
   * raises `SIGBUS`, which kills the process, and a rewritten page shows through the mapping. A file
   * replaced by a rename (how downloads finish) or removed is fine: the mapping keeps the old one.
   * A change between this check and the read is not caught (see `ffi/mmap.ts`).
   */
  #checkUnchanged(): void {
    let now: Deno.FileInfo;
    try {
      now = Deno.statSync(this.path);
    } catch {
      return;
    }
    if (now.ino !== this.#ino) return;
    if (now.size !== this.byteLength || now.mtime?.getTime() !== this.#mtime) {
      throw new CheckpointError(
        `File changed on disk while mapped: ${now.size} bytes now, ${this.byteLength} when opened; reopen the model`,
        this.path,
      );
    }
  }

  /** Tells the kernel how tensor `name`'s bytes will be used (see {@link MappedFile.advise}). */
  advise(name: string, advice: MappingAdvice): void {
    const info = this.info(name);
    this.#file.advise(info.byteOffset, info.byteLength, advice);
  }

  /** Unmaps the file; further calls do nothing. */
  close(): void {
    this.#file.close();
  }

  /** Same as {@link SafetensorsFile.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
