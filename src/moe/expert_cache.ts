/**
 * The GPU tier of the experts: per MoE layer, a fixed number of expert slots in three buffers
 * (gate, up, down) and the slot table `[layer][expert] → slot | −1` that the router and expert
 * kernels read. Changing residency is an upload plus a table write; no pipeline or bind group
 * changes on the hot path. The host tier is the memory-mapped checkpoint ({@link ExpertStore}).
 *
 * @module
 */
import { expertMatrices, expertSlotBytes, type ModelSpec } from "../checkpoint/config.ts";
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import type { MlpNames } from "../models/names.ts";

/** The host tier: raw expert bytes straight from the mapped shards. */
export interface ExpertStore {
  /** gate, up, down of expert `e` of MoE layer `l`, as stored (bf16), zero-copy. */
  expert(
    l: number,
    e: number,
  ): { gate: Uint8Array<ArrayBuffer>; up: Uint8Array<ArrayBuffer>; down: Uint8Array<ArrayBuffer> };
}

/** An {@link ExpertStore} over a checkpoint's tensors. */
export function checkpointExpertStore(
  bytes: (name: string) => Uint8Array<ArrayBuffer>,
  experts: readonly (readonly MlpNames[])[],
): ExpertStore {
  return {
    expert(l, e) {
      const n = experts[l]?.[e];
      if (!n) throw new RangeError(`No expert ${e} in MoE layer ${l}`);
      return { gate: bytes(n.gate), up: bytes(n.up), down: bytes(n.down) };
    },
  };
}

interface LayerSlots {
  gate: TrackedBuffer;
  /** Absent for ungated experts (two matrices). */
  up?: TrackedBuffer;
  down: TrackedBuffer;
  /** slot → expert, or −1 when free. */
  owner: Int32Array;
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
  /** Bytes of one matrix of one expert (I × D bf16). */
  readonly matrixBytes: number;
  readonly moeLayers: number;
  readonly numExperts: number;
  /** Matrices per expert ({@link expertMatrices}): 3 for SwiGLU (gate, up, down), 2 for ReLU experts (wi as gate, wo as down). */
  readonly matrices: 2 | 3;
  /** [moeLayers, E] i32 on the GPU; the CPU mirror is {@link table}. */
  readonly tableBuffer: TrackedBuffer;
  /** expert → slot or −1, row per MoE layer. */
  readonly table: Int32Array<ArrayBuffer>;
  #layers: LayerSlots[] = [];
  #tableDirty = false;
  readonly stats: UploadStats = { uploads: 0, bytesUploaded: 0, uploadSeconds: 0 };

  /**
   * Empty cache with no slots yet; call {@link resize}. An encoder-decoder spec (Switch Transformers)
   * holds two matrices per expert, wi and wo, in the gate and down buffers; the store's `up` is then ignored.
   */
  constructor(
    device: GPUDevice,
    memory: GpuMemory,
    spec: ModelSpec,
    store: ExpertStore,
  ) {
    this.#device = device;
    this.#memory = memory;
    this.#store = store;
    this.matrices = expertMatrices(spec);
    this.moeLayers = spec.sparseLayers.filter((s) => s).length;
    this.numExperts = spec.numExperts;
    this.matrixBytes = expertSlotBytes(spec) / this.matrices;
    this.table = new Int32Array(this.moeLayers * this.numExperts).fill(-1);
    this.tableBuffer = memory.alloc(
      "experts.slot_table",
      this.table.byteLength,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      "tables",
    );
    this.#flushTable(true);
  }

  /** GPU bytes of one expert slot (gate + up + down, or gate + down when ungated). */
  get slotBytes(): number {
    return this.matrices * this.matrixBytes;
  }

  /** Slots per MoE layer. */
  get capacity(): number[] {
    return this.#layers.map((l) => l.owner.length);
  }

  /**
   * The three slot buffers of MoE layer `l` (bind these once; they change only on {@link resize}).
   * Ungated experts have no `up`: it is the gate buffer then.
   */
  buffers(l: number): { gate: GPUBuffer; up: GPUBuffer; down: GPUBuffer } {
    const s = this.#layers[l];
    if (!s) throw new RangeError(`No MoE layer ${l}`);
    return { gate: s.gate.buffer, up: (s.up ?? s.gate).buffer, down: s.down.buffer };
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

  /**
   * Gives every MoE layer `slots[l]` slots, dropping all residents: old buffers are destroyed
   * before new ones are created, so usage never exceeds max(old, new). Callers re-load experts.
   * Bind groups that referenced the old buffers must be rebuilt.
   */
  resize(slots: readonly number[]): void {
    for (const l of this.#layers) {
      this.#memory.free(l.gate);
      this.#memory.free(l.up);
      this.#memory.free(l.down);
    }
    this.#layers = [];
    this.table.fill(-1);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    slots.forEach((n, l) => {
      const size = Math.max(1, n) * this.matrixBytes;
      this.#layers.push({
        gate: this.#memory.alloc(`experts.${l}.gate`, size, usage, "experts"),
        up: this.matrices === 3 ? this.#memory.alloc(`experts.${l}.up`, size, usage, "experts") : undefined,
        down: this.#memory.alloc(`experts.${l}.down`, size, usage, "experts"),
        owner: new Int32Array(n).fill(-1),
      });
    });
    this.#flushTable(true);
  }

  /** A free slot of layer `l`, or −1. */
  freeSlot(l: number): number {
    const s = this.#layers[l];
    return s ? s.owner.indexOf(-1) : -1;
  }

  /** The expert in slot `slot` of layer `l`, or −1. */
  ownerOf(l: number, slot: number): number {
    return this.#layers[l]?.owner[slot] ?? -1;
  }

  /** Makes expert `e` non-resident; its slot becomes free. */
  evict(l: number, e: number): void {
    const i = l * this.numExperts + e;
    const slot = this.table[i]!;
    if (slot < 0) return;
    this.table[i] = -1;
    this.#layers[l]!.owner[slot] = -1;
    this.#tableDirty = true;
  }

  /**
   * Uploads expert `e` of layer `l` into free slot `slot` (raw bytes from the mapping) and marks it
   * resident. Queue order makes every later submission see both the weights and the table entry.
   */
  load(l: number, e: number, slot = this.freeSlot(l)): void {
    const s = this.#layers[l];
    if (!s) throw new RangeError(`No MoE layer ${l}`);
    if (slot < 0 || slot >= s.owner.length || s.owner[slot] !== -1) {
      throw new RangeError(`Slot ${slot} of MoE layer ${l} is not free`);
    }
    if (this.isResident(l, e)) return;
    const t0 = performance.now();
    const w = this.#store.expert(l, e);
    const off = slot * this.matrixBytes;
    const q = this.#device.queue;
    q.writeBuffer(s.gate.buffer, off, w.gate);
    if (s.up) q.writeBuffer(s.up.buffer, off, w.up);
    q.writeBuffer(s.down.buffer, off, w.down);
    s.owner[slot] = e;
    this.table[l * this.numExperts + e] = slot;
    this.#tableDirty = true;
    this.stats.uploads++;
    this.stats.bytesUploaded += this.slotBytes;
    this.stats.uploadSeconds += (performance.now() - t0) / 1000;
  }

  /** Writes the slot table to the GPU if it changed. Call before submitting work that routes. */
  flush(): void {
    this.#flushTable(false);
  }

  #flushTable(force: boolean): void {
    if (!force && !this.#tableDirty) return;
    this.#device.queue.writeBuffer(this.tableBuffer.buffer, 0, this.table);
    this.#tableDirty = false;
  }

  /** Frees every buffer. */
  destroy(): void {
    for (const l of this.#layers) {
      this.#memory.free(l.gate);
      this.#memory.free(l.up);
      this.#memory.free(l.down);
    }
    this.#layers = [];
    this.#memory.free(this.tableBuffer);
  }
}
