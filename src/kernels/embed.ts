/**
 * `shaders/embed.wgsl`: x[t] = E[id_t], the id from `ids` or, for a decode row, the token its sequence's
 * previous step sampled on the GPU.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout("embed.wgsl", ["dim", "vocab", "max_gen"] as const);

/**
 * Records the embedding lookup. table: [vocab, dim] bf16; ids: [rows] u32; rows: the call's `Row`
 * table; generated: [slots, maxGenerated] u32; x: [rows, dim] f32.
 */
export function embed(
  ctx: KernelContext,
  o: {
    label: string;
    table: GPUBuffer;
    ids: GPUBuffer;
    rows: GPUBuffer;
    generated: GPUBuffer;
    maxGenerated: number;
    x: GPUBuffer;
    dim: number;
    vocab: number;
  },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "embed.wgsl",
    // a row per workgroup: wide rows take 256 threads, so each copies a few words, not a serial chain
    constants: { WG: o.dim >= 1024 ? 256 : 64 },
    params: PARAMS.pack({ dim: o.dim, vocab: o.vocab, max_gen: o.maxGenerated }),
    buffers: { 2: o.table, 3: o.ids, 4: o.x, 5: o.rows, 6: o.generated },
    workgroups: (s) => s.t,
  });
}
