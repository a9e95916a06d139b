/**
 * The budgeted allocator: every GPU buffer the engine creates goes through {@link GpuMemory}, so
 * that `gpuBytes` is the real figure and the budget can be a promise.
 *
 * @module
 */
import { BudgetError, GpuError } from "../errors.ts";

/** What a buffer holds, for the statistics. */
export type MemoryCategory = "dense" | "experts" | "kv" | "activations" | "staging" | "tables";

/**
 * A buffer to be allocated: the one description that both the footprint arithmetic (before any
 * allocation, {@link allocationBytes}) and the allocation ({@link GpuMemory.allocAll}) read, so that
 * the two cannot disagree.
 */
export interface Allocation {
  /** Label, unique within its list (the key of {@link GpuMemory.allocAll}'s map). */
  readonly name: string;
  /** Bytes asked for; allocated rounded up to 16 ({@link allocatedSize}). */
  readonly bytes: number;
  readonly usage: GPUBufferUsageFlags;
  readonly category: MemoryCategory;
}

/**
 * Bytes a buffer of `size` takes: rounded up to a multiple of 16, at least 16. WebGPU copies 4-byte units,
 * and kernels that bind a buffer as an array of vec4s (shaders/lib/expert_tiles.wgsl) reach its last
 * words only when its size is a whole number of them.
 */
export function allocatedSize(size: number): number {
  return Math.max(16, Math.ceil(size / 16) * 16);
}

/** Bytes that allocating every entry of `list` takes. */
export function allocationBytes(list: readonly Allocation[]): number {
  return list.reduce((a, b) => a + allocatedSize(b.bytes), 0);
}

/** A tracked GPU buffer. `destroy()` through {@link GpuMemory.free}. */
export interface TrackedBuffer {
  readonly buffer: GPUBuffer;
  readonly size: number;
  readonly category: MemoryCategory;
  readonly label: string;
}

/** Counts every byte allocated on the device, by category, against an optional byte limit. */
export class GpuMemory {
  readonly #device: GPUDevice;
  readonly #live = new Set<TrackedBuffer>();
  #bytes = 0;
  #peak = 0;
  /** The most bytes this allocator may hold; Infinity when unlimited. */
  limit = Infinity;

  /** An allocator over `device`. */
  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /** Bytes held now. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The most bytes ever held at once. */
  get peakBytes(): number {
    return this.#peak;
  }

  /** Bytes held now per category. */
  byCategory(): Record<MemoryCategory, number> {
    const out: Record<MemoryCategory, number> = {
      dense: 0,
      experts: 0,
      kv: 0,
      activations: 0,
      staging: 0,
      tables: 0,
    };
    for (const b of this.#live) out[b.category] += b.size;
    return out;
  }

  /**
   * Creates a buffer of `size` bytes (rounded up to 16). Throws {@link BudgetError} when the limit
   * would be exceeded, before anything is allocated.
   */
  alloc(
    label: string,
    size: number,
    usage: GPUBufferUsageFlags,
    category: MemoryCategory,
    mappedAtCreation = false,
  ): TrackedBuffer {
    const bytes = allocatedSize(size);
    if (this.#bytes + bytes > this.limit) {
      throw new BudgetError(
        `Cannot allocate ${label}: ${bytes} bytes more would hold ${
          this.#bytes + bytes
        } bytes, the budget is ${this.limit}`,
      );
    }
    let buffer: GPUBuffer;
    try {
      buffer = this.#device.createBuffer({ label, size: bytes, usage, mappedAtCreation });
    } catch (e) {
      throw new GpuError(`Cannot create buffer ${label} of ${bytes} bytes: ${(e as Error).message}`, {
        cause: e,
      });
    }
    const t: TrackedBuffer = { buffer, size: bytes, category, label };
    this.#live.add(t);
    this.#bytes += bytes;
    this.#peak = Math.max(this.#peak, this.#bytes);
    return t;
  }

  /** Allocates every entry of `list`, by name; all or none (a failure frees what was allocated). */
  allocAll(list: readonly Allocation[]): Map<string, TrackedBuffer> {
    const out = new Map<string, TrackedBuffer>();
    try {
      for (const a of list) {
        if (out.has(a.name)) throw new GpuError(`Internal: two allocations named ${a.name}`);
        out.set(a.name, this.alloc(a.name, a.bytes, a.usage, a.category));
      }
    } catch (e) {
      for (const t of out.values()) this.free(t);
      throw e;
    }
    return out;
  }

  /** Destroys a buffer and stops counting it. Idempotent. */
  free(t: TrackedBuffer | undefined): void {
    if (!t || !this.#live.delete(t)) return;
    t.buffer.destroy();
    this.#bytes -= t.size;
  }

  /** Destroys every buffer still held. */
  freeAll(): void {
    for (const t of [...this.#live]) this.free(t);
  }

  /** Buffers still held (for leak checks). */
  get liveCount(): number {
    return this.#live.size;
  }
}
