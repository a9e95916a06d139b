/**
 * The engine's GPU memory outside the expert slots, as lists of {@link Allocation}s: the model's
 * dense weights and run state (from its family), the kernels' tables, the slot table and the
 * readback buffers. The same lists give the footprint before anything is allocated (so a budget can
 * be checked, and `info` can answer without a GPU) and are what the engine allocates.
 *
 * @module
 */
import type { TensorInfo } from "../checkpoint/safetensors.ts";
import { contextTables } from "../gpu/dispatch.ts";
import { type Allocation, allocationBytes } from "../gpu/memory.ts";
import {
  type Architecture,
  expertCopyBytes,
  logitRows,
  type ModelTensors,
  type RunShape,
} from "../models/family.ts";
import type { Precision } from "../quant/formats.ts";
import type { Footprint } from "../moe/budget.ts";
import { MAX_READ } from "./token_stream.ts";

/** Name of the slot table in {@link EngineLayout.tables}: [moeLayers, E] i32. */
export const SLOT_TABLE = "experts.slot_table";

/** Every buffer outside the expert slots, by owner. */
export interface EngineLayout {
  /** Dense weights, uploaded once: one buffer per {@link ModelTensors.dense} entry. */
  readonly dense: Allocation[];
  /** The model's run state (activations, KV caches). */
  readonly state: Allocation[];
  /** The Step, the params arena and the slot table. */
  readonly tables: Allocation[];
  /** Readback (MAP_READ) buffers. */
  readonly staging: Allocation[];
}

/** Decode readbacks: a batch of steps being submitted while the two before it are read (src/runtime/batch.ts). */
export const TOKEN_READBACKS = 3;

/** Sizes of the readback buffers; the routing statistics ride behind each payload. */
export interface StagingSizes {
  /** `logitRows × V` f32 logits of a forward call's pass. */
  readonly logits: number;
  /** One of the decode readbacks: up to {@link MAX_READ} u32 token ids per sequence, [sequences, MAX_READ]. */
  readonly tokens: number;
  /** The expert choices of one pass's rows, [rows, K] u32 (exact `lru` routing reads them back). */
  readonly topk: number;
  /** Routing statistics: `moeLayers × E` × 4 f32. */
  readonly stats: number;
  /** GPU timestamps of a decode readback's steps: where each step's pass begins and ends, [MAX_READ, 2] u64 ns. */
  readonly stamps: number;
}

/** Readback buffer sizes for `arch` at `shape`. */
export function stagingSizes(arch: Architecture, shape: RunShape): StagingSizes {
  const { vocabSize: V, numExperts: E, topK: K } = arch.spec;
  return {
    logits: logitRows(shape) * V * 4,
    tokens: shape.sequences * MAX_READ * 4,
    topk: arch.passRows(shape) * K * 4,
    stats: arch.moeLayers * E * 16,
    stamps: 2 * MAX_READ * 8,
  };
}

/** The layout of `arch` at `shape`, its dense weights sized from the checkpoint's tensor table. */
export function engineLayout(
  arch: Architecture,
  tensors: ModelTensors,
  table: ReadonlyMap<string, TensorInfo>,
  shape: RunShape,
): EngineLayout {
  const dense: Allocation[] = tensors.dense.map((d) => ({
    name: d.name,
    bytes: d.parts.reduce((a, n) => a + (table.get(n)?.byteLength ?? 0), 0),
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    category: "dense",
  }));
  const s = stagingSizes(arch, shape);
  const read = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
  return {
    dense,
    state: arch.runState(shape),
    tables: [
      ...contextTables(arch.paramSlots),
      {
        name: SLOT_TABLE,
        bytes: arch.moeLayers * arch.spec.numExperts * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
        category: "tables",
      },
    ],
    staging: [
      { name: "staging.logits", bytes: s.logits + s.stats, usage: read, category: "staging" },
      // a decode readback: tokens, then the statistics, then the steps' timestamps
      ...Array.from({ length: TOKEN_READBACKS }, (_, i) => ({
        name: `staging.tokens${i}`,
        bytes: s.tokens + s.stats + s.stamps,
        usage: read,
        category: "staging" as const,
      })),
      { name: "staging.topk", bytes: s.topk, usage: read, category: "staging" },
      // where the timestamps are resolved before their copy into a readback
      {
        name: "staging.stamps",
        bytes: s.stamps,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
        category: "staging",
      },
    ],
  };
}

/** The footprint of a layout: its buffers' bytes, and one expert copy's at each of `precisions` (high first). */
export function footprintOf(
  arch: Architecture,
  layout: EngineLayout,
  shape: RunShape,
  precisions: readonly Precision[],
): Footprint {
  return {
    fixedBytes: allocationBytes([...layout.dense, ...layout.state, ...layout.tables, ...layout.staging]),
    copyBytes: precisions.map((p) => expertCopyBytes(arch.expertMatrices, p)),
    nativeCopyBytes: expertCopyBytes(arch.expertMatrices, arch.nativePrecision),
    moeLayers: arch.moeLayers,
    experts: arch.spec.numExperts,
    topK: arch.spec.topK,
    contextLength: shape.contextLength,
    sequences: shape.sequences,
  };
}
