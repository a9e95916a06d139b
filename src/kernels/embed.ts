/**
 * `shaders/embed.wgsl`: x[t] = E[ids[t]].
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout("embed.wgsl", ["dim", "vocab"] as const);

/** Records the embedding lookup. table: [vocab, dim] bf16; ids: [rows] u32; x: [rows, dim] f32. */
export function embed(
  ctx: KernelContext,
  o: { label: string; table: GPUBuffer; ids: GPUBuffer; x: GPUBuffer; dim: number; vocab: number },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "embed.wgsl",
    // a row per workgroup: wide rows take 256 threads, so each copies a few words, not a serial chain
    constants: { WG: o.dim >= 1024 ? 256 : 64 },
    params: PARAMS.pack({ dim: o.dim, vocab: o.vocab }),
    buffers: { 2: o.table, 3: o.ids, 4: o.x },
    workgroups: (s) => s.t,
  });
}
