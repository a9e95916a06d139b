/**
 * `shaders/router.wgsl`: masked softmax → top-k routing, the unmasked router's choices, and the
 * per-expert statistics that drive SwapMoE.
 *
 * @module
 */
import { type Dispatch, type KernelContext, packParams, record } from "../gpu/dispatch.ts";

const WG = 64;

/** Buffers and geometry of one MoE layer's router. */
export interface RouterOptions {
  label: string;
  /** MoE layer index (row of the slot table and the statistics). */
  layer: number;
  experts: number;
  topK: number;
  normTopkProb: boolean;
  /** Route only among resident experts (masked gating); false routes exactly (lru, full). */
  masked: boolean;
  dim: number;
  /** logits: [T, E] f32 from the gate projection. */
  logits: GPUBuffer;
  /** slots: [moeLayers, E] i32. */
  slots: GPUBuffer;
  /** x: [T, D] the router's input. */
  x: GPUBuffer;
  topkIds: GPUBuffer;
  topkW: GPUBuffer;
  utopkIds: GPUBuffer;
  utopkP: GPUBuffer;
  xnorm: GPUBuffer;
  /** stats: [moeLayers, E, 4] f32. */
  stats: GPUBuffer;
}

function params(o: RouterOptions): ArrayBuffer {
  return packParams({
    experts: o.experts,
    top_k: o.topK,
    norm_topk: o.normTopkProb ? 1 : 0,
    masked: o.masked ? 1 : 0,
    layer: o.layer,
    dim: o.dim,
  });
}

/** Records the router and the statistics pass after it. */
export async function router(ctx: KernelContext, o: RouterOptions): Promise<Dispatch[]> {
  if (o.topK > 16) throw new RangeError(`router ${o.label}: top-k ${o.topK} exceeds 16`);
  if (o.experts > 256) throw new RangeError(`router ${o.label}: ${o.experts} experts exceed 256`);
  const route = await record(ctx, {
    label: o.label,
    file: "router.wgsl",
    params: params(o),
    buffers: {
      2: o.logits,
      3: o.slots,
      4: o.x,
      5: o.topkIds,
      6: o.topkW,
      7: o.utopkIds,
      8: o.utopkP,
      9: o.xnorm,
    },
    workgroups: (s) => s.t,
  });
  const stats = await record(ctx, {
    label: `${o.label}.stats`,
    file: "router.wgsl",
    entry: "accumulate",
    params: params(o),
    buffers: { 3: o.slots, 7: o.utopkIds, 8: o.utopkP, 9: o.xnorm, 10: o.stats },
    workgroups: () => Math.ceil(o.experts / WG),
  });
  return [route, stats];
}
