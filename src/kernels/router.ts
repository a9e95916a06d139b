/**
 * `shaders/router.wgsl`: masked softmax → top-k routing, the unmasked router's choices, and the
 * per-expert statistics that drive SwapMoE.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout(
  "router.wgsl",
  [
    "experts",
    "top_k",
    "norm_topk",
    "masked",
    "layer",
    "dim",
    "rows_cap",
    "n_layers",
  ] as const,
);

/** Threads of the statistics pass. */
const WG = 64;
/** Threads of a token's routing: its ‖x‖ reads the token's D values, a few per thread. */
const ROUTE_WG = 256;

/** Buffers and geometry of one MoE layer's router. */
export interface RouterOptions {
  label: string;
  /** MoE layer index (row of the slot table, region of the unmasked choices). */
  layer: number;
  experts: number;
  topK: number;
  normTopkProb: boolean;
  /** Route only among resident experts (masked gating); false routes exactly (lru, full). */
  masked: boolean;
  dim: number;
  /** Rows per call at most: the size of each layer's region in the unmasked-choice buffers. */
  rowsCap: number;
  /** logits: [T, E] f32 from the gate projection. */
  logits: GPUBuffer;
  /** slots: [moeLayers, E] i32. */
  slots: GPUBuffer;
  /** x: [T, D] the router's input. */
  x: GPUBuffer;
  topkIds: GPUBuffer;
  topkW: GPUBuffer;
  /** [moeLayers, rowsCap, K] u32 and f32: the unmasked router's choices, per layer. */
  utopkIds: GPUBuffer;
  utopkP: GPUBuffer;
  /** [moeLayers, rowsCap] f32 ‖x‖. */
  xnorm: GPUBuffer;
}

function params(
  o: Omit<
    RouterOptions,
    "label" | "logits" | "slots" | "x" | "topkIds" | "topkW" | "utopkIds" | "utopkP" | "xnorm"
  >,
  layers: number,
): ArrayBuffer {
  return PARAMS.pack({
    experts: o.experts,
    top_k: o.topK,
    norm_topk: o.normTopkProb ? 1 : 0,
    masked: o.masked ? 1 : 0,
    layer: o.layer,
    dim: o.dim,
    rows_cap: o.rowsCap,
    n_layers: layers,
  });
}

/** Records one layer's router (one workgroup per token). */
export function router(ctx: KernelContext, o: RouterOptions): Promise<Dispatch> {
  if (o.topK > 16) throw new RangeError(`router ${o.label}: top-k ${o.topK} exceeds 16`);
  if (o.experts > 256) throw new RangeError(`router ${o.label}: ${o.experts} experts exceed 256`);
  return record(ctx, {
    label: o.label,
    file: "router.wgsl",
    constants: { WG: ROUTE_WG },
    params: params(o, 0),
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
}

/**
 * Records the statistics pass: stats [moeLayers, E, 4] += this call's choices at MoE layers
 * `layer0` (default 0) … `layer0 + layers − 1`.
 */
export function routerStats(
  ctx: KernelContext,
  o: {
    label: string;
    layer0?: number;
    layers: number;
    experts: number;
    topK: number;
    rowsCap: number;
    slots: GPUBuffer;
    utopkIds: GPUBuffer;
    utopkP: GPUBuffer;
    xnorm: GPUBuffer;
    stats: GPUBuffer;
  },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "router.wgsl",
    entry: "accumulate",
    params: params({ ...o, layer: o.layer0 ?? 0, normTopkProb: false, masked: false, dim: 0 }, o.layers),
    buffers: { 3: o.slots, 7: o.utopkIds, 8: o.utopkP, 9: o.xnorm, 10: o.stats },
    workgroups: () => Math.ceil((o.layers * o.experts) / WG),
  });
}
