/**
 * The GPU tier of the experts: per MoE layer, a fixed number of expert slots (one buffer per expert
 * matrix, `slots × rows × cols` bf16) and the slot table `[layer][expert] → slot | −1` that the
 * router and expert kernels read. Changing residency is an upload plus a table write; no pipeline or
 * bind group changes on the hot path. The host tier is the memory-mapped checkpoint
 * ({@link ExpertStore}); which expert sits in which slot is the CPU's {@link SlotMap}.
 *
 * @module
 */
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import { expertBytes, type ExpertMatrix } from "../models/family.ts";

/** The host tier: raw expert bytes straight from the mapped shards. */
export interface ExpertStore {
  /** The matrices of expert `e` of MoE layer `l`, in slot order, as stored (bf16), zero-copy. */
  expert(l: number, e: number): readonly Uint8Array<ArrayBuffer>[];
}

/** An {@link ExpertStore} over a checkpoint's tensors: `experts[l][e]` names expert e's matrices in layer l. */
export function checkpointExpertStore(
  bytes: (name: string) => Uint8Array<ArrayBuffer>,
  experts: readonly (readonly (readonly string[])[])[],
): ExpertStore {
  return {
    expert(l, e) {
      const names = experts[l]?.[e];
      if (!names) throw new RangeError(`No expert ${e} in MoE layer ${l}`);
      return names.map(bytes);
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

/** Expert slots on the GPU with the slot table. */
export class ExpertCache {
  readonly #device: GPUDevice;
  readonly #memory: GpuMemory;
  readonly #store: ExpertStore;
  /** One expert's matrices, in slot order. */
  readonly matrices: readonly ExpertMatrix[];
  /** GPU bytes of one expert slot (all its matrices). */
  readonly slotBytes: number;
  /** [moeLayers, E] i32 on the GPU, mirroring {@link SlotMap.table}. */
  readonly tableBuffer: TrackedBuffer;
  readonly slots: SlotMap;
  /** Per layer, one buffer per matrix: [slots, rows, cols] bf16. */
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
    store: ExpertStore,
  ) {
    this.#device = device;
    this.#memory = memory;
    this.#store = store;
    this.matrices = matrices;
    this.slotBytes = expertBytes(matrices);
    this.tableBuffer = tableBuffer;
    this.slots = new SlotMap(moeLayers, numExperts);
    this.flush();
  }

  /** MoE layers. */
  get moeLayers(): number {
    return this.slots.moeLayers;
  }

  /** Experts per MoE layer. */
  get numExperts(): number {
    return this.slots.numExperts;
  }

  /** Slots per MoE layer. */
  get capacity(): number[] {
    return this.slots.capacity;
  }

  /** The slot buffers of MoE layer `l`, one per matrix in slot order: bind these once; they change only on {@link resize}. */
  buffers(l: number): GPUBuffer[] {
    const b = this.#buffers[l];
    if (!b) throw new RangeError(`No MoE layer ${l}`);
    return b.map((t) => t.buffer);
  }

  /** Resident experts of layer `l`, ascending. */
  resident(l: number): number[] {
    return this.slots.resident(l);
  }

  /** Whether expert `e` of layer `l` is resident. */
  isResident(l: number, e: number): boolean {
    return this.slots.isResident(l, e);
  }

  /** A free slot of layer `l`, or −1. */
  freeSlot(l: number): number {
    return this.slots.freeSlot(l);
  }

  /**
   * Gives every MoE layer `capacity[l]` slots, dropping all residents: old buffers are destroyed
   * before new ones are created, so usage never exceeds max(old, new). Callers load experts again,
   * and rebuild the bind groups that referenced the old buffers.
   */
  resize(capacity: readonly number[]): void {
    for (const layer of this.#buffers) layer.forEach((t) => this.#memory.free(t));
    this.#buffers = [];
    this.slots.resize(capacity);
    this.#tableDirty = true;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    capacity.forEach((n, l) => {
      this.#buffers.push(
        this.matrices.map((m) =>
          this.#memory.alloc(`experts.${l}.${m.name}`, Math.max(1, n) * m.rows * m.cols * 2, usage, "experts")
        ),
      );
    });
    this.flush();
  }

  /** Makes expert `e` of layer `l` non-resident; its slot becomes free. */
  evict(l: number, e: number): void {
    if (this.slots.evict(l, e)) this.#tableDirty = true;
  }

  /**
   * Uploads expert `e` of layer `l` into free slot `slot` (raw bytes from the mapping) and marks it
   * resident. Queue order makes every later submission see both the weights and the table entry
   * (after {@link flush}).
   */
  load(l: number, e: number, slot: number = this.freeSlot(l)): void {
    if (this.isResident(l, e)) return;
    this.slots.assign(l, e, slot);
    const t0 = performance.now();
    const parts = this.#store.expert(l, e);
    const buffers = this.#buffers[l]!;
    const q = this.#device.queue;
    this.matrices.forEach((m, i) => q.writeBuffer(buffers[i]!.buffer, slot * m.rows * m.cols * 2, parts[i]!));
    this.#tableDirty = true;
    this.stats.uploads++;
    this.stats.bytesUploaded += this.slotBytes;
    this.stats.uploadSeconds += (performance.now() - t0) / 1000;
  }

  /** Writes the slot table to the GPU if it changed. Call before submitting work that routes. */
  flush(): void {
    if (!this.#tableDirty) return;
    this.#device.queue.writeBuffer(this.tableBuffer.buffer, 0, this.slots.table);
    this.#tableDirty = false;
  }
}
