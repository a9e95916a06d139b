/**
 * The GPU side of the experts: per MoE layer and precision tier, a fixed number of expert slots, and
 * the slot table `[layer][expert] → (tier, slot) | −1` that the router and expert kernels read (the
 * best resident copy of each expert: shaders/experts.wgsl). Each expert matrix has one buffer per
 * layer: the high tier's slots, then the low tier's, each copy in its tier's format
 * (src/quant/formats.ts). Changing residency is an upload plus a table write; no pipeline or bind
 * group changes on the hot path. The host side is an {@link ExpertStore} (the mapped checkpoint, or
 * quantized bytes); which expert sits in which slot is the CPU's {@link SlotMap}, one per tier.
 *
 * @module
 */
import { BudgetError } from "../errors.ts";
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import { slotEntry } from "../kernels/experts.ts";
import { expertCopyBytes, type ExpertMatrix, type TensorPiece } from "../models/family.ts";
import { matrixLayout, type Precision } from "../quant/formats.ts";
import { formatBytes } from "./budget.ts";

/** Bytes to write at byte `at` of a matrix copy. */
export interface Piece {
  readonly at: number;
  readonly bytes: Uint8Array<ArrayBuffer>;
}

/** The host side: each copy's bytes, per matrix, in its precision's layout. */
export interface ExpertStore {
  /** Matrix by matrix (slot order), the pieces of expert `e` of MoE layer `l` at `precision`, zero-copy where they can be. */
  expert(l: number, e: number, precision: Precision): readonly (readonly Piece[])[];
}

/**
 * An {@link ExpertStore} over a checkpoint: copies at `native` precision are the stored bytes
 * (`pieces(l, e, m)` says where, `bytes(tensor)` maps a tensor), others come from `derived` (quantized
 * from them), when given.
 */
export function checkpointExpertStore(
  bytes: (tensor: string) => Uint8Array<ArrayBuffer>,
  pieces: (l: number, e: number, m: number) => readonly TensorPiece[],
  matrices: number,
  native: Precision,
  derived?: ExpertStore,
): ExpertStore {
  return {
    expert(l, e, precision) {
      if (precision !== native) {
        if (!derived) {
          throw new RangeError(`No ${precision} copies of the experts: they are stored in ${native}`);
        }
        return derived.expert(l, e, precision);
      }
      return Array.from(
        { length: matrices },
        (_, m) =>
          pieces(l, e, m).map((p) => ({
            at: p.at,
            bytes: bytes(p.tensor).subarray(p.offset, p.offset + p.bytes),
          })),
      );
    },
  };
}

/**
 * Which expert sits in which slot, per MoE layer: the CPU side of the slot table, without a GPU.
 * `table[l · E + e]` is expert e's slot in layer l, or −1.
 */
export class SlotMap {
  readonly moeLayers: number;
  readonly numExperts: number;
  /** expert → slot or −1, row per MoE layer: what the GPU's slot table mirrors. */
  readonly table: Int32Array<ArrayBuffer>;
  /** Per layer, slot → expert or −1. */
  #owners: Int32Array[] = [];

  /** An empty map of `moeLayers` × `numExperts` with no slots; call {@link resize}. */
  constructor(moeLayers: number, numExperts: number) {
    this.moeLayers = moeLayers;
    this.numExperts = numExperts;
    this.table = new Int32Array(moeLayers * numExperts).fill(-1);
  }

  /** Slots per MoE layer. */
  get capacity(): number[] {
    return this.#owners.map((o) => o.length);
  }

  /** Gives layer l `capacity[l]` slots, all free: every expert leaves. */
  resize(capacity: readonly number[]): void {
    if (capacity.length !== this.moeLayers) {
      throw new RangeError(`Expected slots for ${this.moeLayers} MoE layers, got ${capacity.length}`);
    }
    this.#owners = capacity.map((n) => new Int32Array(n).fill(-1));
    this.table.fill(-1);
  }

  /** Resident experts of layer `l`, ascending. */
  resident(l: number): number[] {
    const out: number[] = [];
    for (let e = 0; e < this.numExperts; e++) if (this.table[l * this.numExperts + e]! >= 0) out.push(e);
    return out;
  }

  /** Whether expert `e` of layer `l` is resident. */
  isResident(l: number, e: number): boolean {
    return this.table[l * this.numExperts + e]! >= 0;
  }

  /** Expert `e`'s slot in layer `l`, or −1. */
  slotOf(l: number, e: number): number {
    return this.table[l * this.numExperts + e]!;
  }

  /** A free slot of layer `l` (the lowest), or −1. */
  freeSlot(l: number): number {
    return this.#owners[l]?.indexOf(-1) ?? -1;
  }

  /** The expert in slot `slot` of layer `l`, or −1. */
  ownerOf(l: number, slot: number): number {
    return this.#owners[l]?.[slot] ?? -1;
  }

  /** Puts expert `e` in free slot `slot` of layer `l`. */
  assign(l: number, e: number, slot: number): void {
    const owners = this.#owners[l];
    if (!owners) throw new RangeError(`No MoE layer ${l}`);
    if (!(e >= 0 && e < this.numExperts)) throw new RangeError(`No expert ${e} in MoE layer ${l}`);
    if (!(slot >= 0 && slot < owners.length) || owners[slot] !== -1) {
      throw new RangeError(`Slot ${slot} of MoE layer ${l} is not free`);
    }
    if (this.isResident(l, e)) throw new RangeError(`Expert ${e} of MoE layer ${l} is already resident`);
    owners[slot] = e;
    this.table[l * this.numExperts + e] = slot;
  }

  /** Makes expert `e` of layer `l` non-resident; its slot becomes free. Returns whether it was resident. */
  evict(l: number, e: number): boolean {
    const i = l * this.numExperts + e;
    const slot = this.table[i]!;
    if (slot < 0) return false;
    this.table[i] = -1;
    this.#owners[l]![slot] = -1;
    return true;
  }
}

/** Counters of upload traffic. */
export interface UploadStats {
  uploads: number;
  bytesUploaded: number;
  uploadSeconds: number;
}

/** Expert slots on the GPU in one or two precision tiers, with the slot table. */
export class ExpertCache {
  readonly #device: GPUDevice;
  readonly #memory: GpuMemory;
  readonly #store: ExpertStore;
  /** One expert's matrices, in slot order. */
  readonly matrices: readonly ExpertMatrix[];
  /** The tiers' precisions, high first: one, or a high and a low. */
  readonly precisions: readonly Precision[];
  /** GPU bytes of one copy of an expert at each tier. */
  readonly copyBytes: readonly number[];
  /** [moeLayers, E] i32 on the GPU: each expert's best resident copy (tier, slot), or −1. */
  readonly tableBuffer: TrackedBuffer;
  /** The CPU mirror of the slot table. */
  readonly table: Int32Array<ArrayBuffer>;
  /** Which expert sits in which slot, per tier. */
  readonly slots: readonly SlotMap[];
  /** Per layer, one buffer per matrix: the high tier's slots, then the low tier's. */
  #buffers: TrackedBuffer[][] = [];
  #tableDirty = true;
  readonly stats: UploadStats = { uploads: 0, bytesUploaded: 0, uploadSeconds: 0 };

  /**
   * An empty cache with no slots yet (call {@link resize}); `tableBuffer` holds the slot table,
   * `moeLayers × numExperts` i32, allocated by the caller with the rest of the fixed footprint.
   */
  constructor(
    device: GPUDevice,
    memory: GpuMemory,
    tableBuffer: TrackedBuffer,
    matrices: readonly ExpertMatrix[],
    moeLayers: number,
    numExperts: number,
    precisions: readonly Precision[],
    store: ExpertStore,
  ) {
    if (precisions.length < 1 || precisions.length > 2) {
      throw new RangeError(`Expected one or two precision tiers, got ${precisions.length}`);
    }
    this.#device = device;
    this.#memory = memory;
    this.#store = store;
    this.matrices = matrices;
    this.precisions = precisions;
    this.copyBytes = precisions.map((p) => expertCopyBytes(matrices, p));
    this.tableBuffer = tableBuffer;
    this.table = new Int32Array(moeLayers * numExperts).fill(-1);
    this.slots = precisions.map(() => new SlotMap(moeLayers, numExperts));
    this.flush();
  }

  /** MoE layers. */
  get moeLayers(): number {
    return this.slots[0]!.moeLayers;
  }

  /** Experts per MoE layer. */
  get numExperts(): number {
    return this.slots[0]!.numExperts;
  }

  /** Tiers: 1 or 2. */
  get tiers(): number {
    return this.precisions.length;
  }

  /** Slots per tier and MoE layer: [tier][layer]. */
  get capacity(): number[][] {
    return this.slots.map((s) => s.capacity);
  }

  /** The slot buffers of MoE layer `l`, one per matrix in slot order: bind these once; they change only on {@link resize}. */
  buffers(l: number): GPUBuffer[] {
    const b = this.#buffers[l];
    if (!b) throw new RangeError(`No MoE layer ${l}`);
    return b.map((t) => t.buffer);
  }

  /** Experts of layer `l` with a copy at `tier`, ascending. */
  resident(l: number, tier: number): number[] {
    return this.slots[tier]!.resident(l);
  }

  /** Experts of layer `l` with a copy at any tier, ascending. */
  residentAny(l: number): number[] {
    const out: number[] = [];
    for (let e = 0; e < this.numExperts; e++) if (this.tierOf(l, e) >= 0) out.push(e);
    return out;
  }

  /** The best tier expert `e` of layer `l` has a copy at, or −1. */
  tierOf(l: number, e: number): number {
    return this.slots.findIndex((s) => s.isResident(l, e));
  }

  /** A free slot of layer `l` at `tier`, or −1. */
  freeSlot(l: number, tier: number): number {
    return this.slots[tier]!.freeSlot(l);
  }

  /**
   * Gives every MoE layer `capacity[t][l]` slots at tier t, dropping all residents: old buffers are
   * destroyed before new ones are created, so usage never exceeds max(old, new). Callers load experts
   * again, and rebuild the bind groups that referenced the old buffers.
   * @throws {BudgetError} before anything changes, when a layer's slots of one matrix would make a
   *   buffer larger than the device binds (`maxStorageBufferBindingSize`)
   */
  resize(capacity: readonly (readonly number[])[]): void {
    if (capacity.length !== this.tiers) {
      throw new RangeError(`Expected slots for ${this.tiers} tiers, got ${capacity.length}`);
    }
    this.#checkBinding(capacity);
    for (const layer of this.#buffers) layer.forEach((t) => this.#memory.free(t));
    this.#buffers = [];
    this.slots.forEach((s, t) => s.resize(capacity[t]!));
    this.table.fill(-1);
    this.#tableDirty = true;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    for (let l = 0; l < this.moeLayers; l++) {
      this.#buffers.push(
        this.matrices.map((m) =>
          this.#memory.alloc(
            `experts.${l}.${m.name}`,
            this.precisions.reduce(
              (a, p, t) => a + capacity[t]![l]! * matrixLayout(p, m.rows, m.cols, m.bias).bytes,
              0,
            ),
            usage,
            "experts",
          )
        ),
      );
    }
    this.flush();
  }

  /**
   * Each layer's slots of one matrix are one buffer, bound whole by the expert kernels: `capacity` must
   * keep every such buffer within the device's `maxStorageBufferBindingSize` (128 MiB on Mesa's
   * lavapipe, gigabytes on discrete GPUs).
   */
  #checkBinding(capacity: readonly (readonly number[])[]): void {
    const limit = this.#device.limits.maxStorageBufferBindingSize;
    const size = (t: number, m: ExpertMatrix) =>
      matrixLayout(this.precisions[t]!, m.rows, m.cols, m.bias).bytes;
    for (let l = 0; l < this.moeLayers; l++) {
      for (const m of this.matrices) {
        const bytes = this.precisions.reduce((a, _, t) => a + capacity[t]![l]! * size(t, m), 0);
        if (bytes <= limit) continue;
        const experts = capacity.reduce((a, c) => a + c[l]!, 0);
        const widest = this.matrices.reduce((a, x) => Math.max(a, size(this.tiers - 1, x)), 0);
        const fit = Math.floor(limit / widest);
        throw new BudgetError(
          `Too many experts a layer for this GPU: layer ${l}'s ${experts} copies of ${m.name} would take ${
            formatBytes(bytes)
          } in one buffer, above the ${
            formatBytes(limit)
          } the GPU binds (maxStorageBufferBindingSize); it binds at most ${fit} of ${this.numExperts} experts a layer at ${
            this.precisions[this.tiers - 1]
          }: use swapmoe or static with a budget that holds no more, such as "${fit}/${this.numExperts}"`,
        );
      }
    }
  }

  /** Byte offset in matrix `m`'s buffer of layer `l` where `slot` of `tier` starts. */
  #offset(l: number, m: number, tier: number, slot: number): number {
    const mx = this.matrices[m]!;
    const size = (t: number) => matrixLayout(this.precisions[t]!, mx.rows, mx.cols, mx.bias).bytes;
    const base = tier === 0 ? 0 : this.slots[0]!.capacity[l]! * size(0);
    return base + slot * size(tier);
  }

  /** Drops expert `e`'s copy at `tier` in layer `l`; its slot becomes free. */
  evict(l: number, e: number, tier: number): void {
    if (!this.slots[tier]!.evict(l, e)) return;
    this.#setEntry(l, e);
  }

  /**
   * Uploads expert `e` of layer `l` at `tier` into free slot `slot` (default: a free one) from the
   * store, and marks the copy resident. Queue order makes every later submission see both the weights
   * and the table entry (after {@link flush}).
   */
  load(l: number, e: number, tier: number, slot: number = this.freeSlot(l, tier)): void {
    const map = this.slots[tier]!;
    if (map.isResident(l, e)) return;
    map.assign(l, e, slot);
    const t0 = performance.now();
    const parts = this.#store.expert(l, e, this.precisions[tier]!);
    const buffers = this.#buffers[l]!;
    const q = this.#device.queue;
    parts.forEach((pieces, m) => {
      const base = this.#offset(l, m, tier, slot);
      for (const p of pieces) writePadded(q, buffers[m]!.buffer, base + p.at, p.bytes);
    });
    this.#setEntry(l, e);
    this.stats.uploads++;
    this.stats.bytesUploaded += this.copyBytes[tier]!;
    this.stats.uploadSeconds += (performance.now() - t0) / 1000;
  }

  /** The table entry of expert `e` of layer `l`: its best resident copy. */
  #setEntry(l: number, e: number): void {
    const tier = this.tierOf(l, e);
    this.table[l * this.numExperts + e] = tier < 0 ? -1 : slotEntry(tier, this.slots[tier]!.slotOf(l, e));
    this.#tableDirty = true;
  }

  /** Writes the slot table to the GPU if it changed. Call before submitting work that routes. */
  flush(): void {
    if (!this.#tableDirty) return;
    this.#device.queue.writeBuffer(this.tableBuffer.buffer, 0, this.table);
    this.#tableDirty = false;
  }
}

/** Writes `bytes` at `offset`, padded with zeros to the 4-byte multiple `writeBuffer` needs. */
export function writePadded(
  queue: GPUQueue,
  buffer: GPUBuffer,
  offset: number,
  bytes: Uint8Array<ArrayBuffer>,
): void {
  if (bytes.byteLength % 4 === 0) {
    queue.writeBuffer(buffer, offset, bytes);
    return;
  }
  const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
  padded.set(bytes);
  queue.writeBuffer(buffer, offset, padded);
}
