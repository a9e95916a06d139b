/**
 * `shaders/experts.wgsl`: experts read from GPU slots through the slot table — SwiGLU (gate, up,
 * down) or, without `up`, ReLU (Switch's wi, wo) — weighted and added to the residual stream.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout("experts.wgsl", ["dim", "inter", "top_k", "experts", "layer"] as const);

/** Buffers and geometry of one MoE layer's experts. */
export interface ExpertsOptions {
  label: string;
  layer: number;
  dim: number;
  inter: number;
  topK: number;
  experts: number;
  topkIds: GPUBuffer;
  topkW: GPUBuffer;
  slots: GPUBuffer;
  x: GPUBuffer;
  /**
   * gate, up: [slots, I, D] bf16; down: [slots, D, I] bf16. Without `up` the experts are ReLU MLPs
   * (T5's DenseReluDense): `gate` holds wi and `down` wo.
   */
  gate: GPUBuffer;
  up?: GPUBuffer;
  down: GPUBuffer;
  /** h: [T·K, I] f32 scratch. */
  h: GPUBuffer;
  /** y: [T, D] f32, added into. */
  y: GPUBuffer;
}

/** Records gate/up (+SiLU·mul) or wi (+ReLU), then down (+weighted sum +residual). */
export async function experts(ctx: KernelContext, o: ExpertsOptions): Promise<Dispatch[]> {
  if (o.dim % 2 || o.inter % 2) throw new RangeError(`experts ${o.label}: dimensions must be even`);
  const params = PARAMS.pack({
    dim: o.dim,
    inter: o.inter,
    top_k: o.topK,
    experts: o.experts,
    layer: o.layer,
  });
  return [
    await record(ctx, {
      label: `${o.label}.${o.up ? "gate_up" : "wi_relu"}`,
      file: "experts.wgsl",
      entry: o.up ? "gate_up" : "wi_relu",
      params,
      buffers: o.up
        ? { 2: o.topkIds, 3: o.slots, 4: o.x, 5: o.gate, 6: o.up, 7: o.h }
        : { 2: o.topkIds, 3: o.slots, 4: o.x, 5: o.gate, 7: o.h },
      workgroups: (s) => s.t * o.topK * o.inter,
    }),
    await record(ctx, {
      label: `${o.label}.down`,
      file: "experts.wgsl",
      entry: "down_sum",
      params,
      buffers: { 2: o.topkIds, 3: o.slots, 7: o.h, 8: o.topkW, 9: o.down, 10: o.y },
      workgroups: (s) => s.t * o.dim,
    }),
  ];
}
