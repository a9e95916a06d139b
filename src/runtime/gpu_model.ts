/**
 * A planned model put on the GPU: the device, the budgeted allocator with every fixed buffer of the
 * layout, the dense weights uploaded, the expert slots sized for the budget (empty), and the model's
 * recorded passes. The engine fills the slots under its policy; benches fill them as they need.
 *
 * @module
 */
import { createGpu, type Gpu } from "../gpu/device.ts";
import { contextOver, type KernelContext } from "../gpu/dispatch.ts";
import { GpuMemory, type TrackedBuffer } from "../gpu/memory.ts";
import type { ModelProgram } from "../models/family.ts";
import { formatBytes } from "../moe/budget.ts";
import { checkpointExpertStore, ExpertCache, type ExpertStore, writePadded } from "../moe/expert_cache.ts";
import { GpuError, OptionError } from "../errors.ts";
import { SLOT_TABLE } from "./layout.ts";
import type { ModelPlan } from "./model_plan.ts";
import type { Progress } from "./types.ts";

/** What {@link loadGpuModel} puts on the GPU. */
export interface GpuModel {
  readonly gpu: Gpu;
  readonly memory: GpuMemory;
  readonly ctx: KernelContext;
  /** The Step every dispatch reads (src/kernels/step.ts). */
  readonly step: GPUBuffer;
  /** The readback buffers of the layout, by name. */
  readonly staging: ReadonlyMap<string, TrackedBuffer>;
  /** The host tier: expert bytes from the mapped checkpoint. */
  readonly store: ExpertStore;
  readonly cache: ExpertCache;
  readonly program: ModelProgram;
}

/**
 * Opens a GPU and loads `planned` under `budget` bytes: the allocator's limit is the budget, every
 * fixed buffer is allocated, the dense weights uploaded, and `slots[t][l]` expert slots made per tier and MoE
 * layer. On failure everything allocated is freed and the device destroyed (the checkpoint stays
 * open: the caller owns it).
 * @throws {OptionError} when a run-state buffer exceeds what the device binds, {@link GpuError} when a
 *   dense weight does, `BudgetError` when the slots of one layer's matrix do; GPU errors as they come
 */
export async function loadGpuModel(
  planned: ModelPlan,
  o: {
    budget: number;
    slots: readonly (readonly number[])[];
    /** Copies of the experts at precisions other than the checkpoint's (quantized: src/quant/store.ts). */
    derived?: ExpertStore;
    masked: boolean;
    options: Readonly<Record<string, unknown>>;
    progress?: (p: Progress) => void;
  },
): Promise<GpuModel> {
  const { arch, ckpt, tensors, layout, shape } = planned;
  const progress = o.progress ?? (() => {});
  progress({ stage: "gpu", done: 0, total: 1 });
  const gpu = await createGpu();
  const memory = new GpuMemory(gpu.device);
  try {
    // an option can grow a run-state buffer past what the device binds
    const limit = gpu.info.maxStorageBufferBindingSize;
    const largest = layout.state.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    if (largest.bytes > limit) {
      const fits = longestContext(planned, limit);
      throw new OptionError(
        `Invalid contextLength / maxBatchTokens / maxBatchSequences: the run-state buffer ${largest.name} would take ${
          formatBytes(largest.bytes)
        }, above this GPU's maxStorageBufferBindingSize of ${
          formatBytes(limit)
        }: lower contextLength (${shape.contextLength}), maxBatchTokens (${shape.maxRows}) or maxBatchSequences (${shape.sequences})${
          fits > 0 ? `; use contextLength <= ${fits}` : ""
        }`,
      );
    }
    // a dense weight is bound whole by its kernels: one larger than the device binds cannot run here
    const dense = layout.dense.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    if (dense.bytes > limit) {
      throw new GpuError(
        `This GPU cannot hold the model's ${dense.name}: it takes ${
          formatBytes(dense.bytes)
        } in one buffer, above the ${
          formatBytes(limit)
        } the GPU binds (maxStorageBufferBindingSize); dense weights are not split across buffers, so the model needs a GPU that binds more`,
      );
    }
    memory.limit = o.budget;
    const tables = memory.allocAll(layout.tables);
    const staging = memory.allocAll(layout.staging);
    const state = memory.allocAll(layout.state);
    const weights = memory.allocAll(layout.dense);
    const ctx = contextOver(gpu.device, tables);

    // dense weights, uploaded once as stored
    const totalBytes = layout.dense.reduce((a, d) => a + d.bytes, 0);
    let bytes = 0;
    for (const [i, d] of tensors.dense.entries()) {
      const buffer = weights.get(d.name)!.buffer;
      let offset = 0;
      for (const part of d.parts) {
        const b = ckpt.bytes(part);
        writePadded(gpu.device.queue, buffer, offset, b);
        offset += b.byteLength;
      }
      bytes += offset;
      progress({ stage: "weights", done: i + 1, total: tensors.dense.length, bytes, totalBytes });
    }

    const store = checkpointExpertStore(
      (n) => ckpt.bytes(n),
      tensors.expertPieces,
      arch.expertMatrices.length,
      arch.nativePrecision,
      o.derived,
    );
    const cache = new ExpertCache(
      gpu.device,
      memory,
      tables.get(SLOT_TABLE)!,
      arch.expertMatrices,
      arch.moeLayers,
      arch.spec.numExperts,
      planned.precisions,
      store,
    );
    cache.resize(o.slots);
    const program = await arch.build({
      ctx,
      weights,
      state,
      cache,
      shape,
      masked: o.masked,
      options: o.options,
    });
    return { gpu, memory, ctx, step: tables.get("step")!.buffer, staging, store, cache, program };
  } catch (e) {
    memory.freeAll();
    gpu.device.destroy();
    throw e;
  }
}

/** The longest context whose run-state buffers each fit in `limit` bytes at the plan's batch size (0 if none). */
function longestContext(planned: ModelPlan, limit: number): number {
  const fits = (c: number) =>
    planned.arch.runState({
      maxRows: Math.min(planned.shape.maxRows, c),
      contextLength: c,
      maxGenerated: c,
      sequences: planned.shape.sequences,
    })
      .every((a) => a.bytes <= limit);
  let lo = 0;
  let hi = planned.shape.contextLength;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
