/**
 * `shaders/experts.wgsl`: experts read from GPU slots through the slot table — SwiGLU (gate, up,
 * down) or, without `up`, ReLU (Switch's wi, wo) — weighted and added to the residual stream. Each
 * tier's copies are read in their own format (bf16, int8, int4, mxfp4: src/quant/formats.ts).
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";
import { FORMAT_CODE, matrixLayout, type Precision } from "../quant/formats.ts";

const FIELDS = ["dim", "inter", "top_k", "experts", "layer", "lo_base", "hi_words", "lo_words"] as const;
/** The Params of shaders/lib/expert_formats.wgsl, as each of the two expert shaders includes it. */
const PARAMS = paramsLayout("experts.wgsl", FIELDS);
paramsLayout("experts_down.wgsl", FIELDS);

/** Bit of a slot-table entry where the tier starts (shaders/experts.wgsl `TIER_SHIFT`). */
export const TIER_SHIFT = 28;

/** The slot-table entry of a copy in `slot` of `tier` (0 high, 1 low). */
export function slotEntry(tier: number, slot: number): number {
  return (tier << TIER_SHIFT) | slot;
}

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
  /** The tiers' formats, high first: one, or a high and a low. */
  formats: readonly Precision[];
  /** Slots of the high tier in this layer: the low tier's copies start after them in every matrix buffer. */
  highSlots: number;
}

/** Records gate/up (+SiLU·mul) or wi (+ReLU), then down (+weighted sum +residual). */
export async function experts(ctx: KernelContext, o: ExpertsOptions): Promise<Dispatch[]> {
  if (o.dim % 2 || o.inter % 2) throw new RangeError(`experts ${o.label}: dimensions must be even`);
  const hi = o.formats[0];
  if (!hi) throw new RangeError(`experts ${o.label}: no format`);
  const lo = o.formats[1] ?? hi;
  // words of one matrix copy per tier: gate, up [I, D] and down [D, I] hold as many weights
  const words = (f: Precision) => matrixLayout(f, o.inter, o.dim).bytes / 4;
  const params = PARAMS.pack({
    dim: o.dim,
    inter: o.inter,
    top_k: o.topK,
    experts: o.experts,
    layer: o.layer,
    lo_base: o.highSlots * words(hi),
    hi_words: words(hi),
    lo_words: words(lo),
  });
  const constants = { HI_FMT: FORMAT_CODE[hi], LO_FMT: FORMAT_CODE[lo] };
  return [
    await record(ctx, {
      label: `${o.label}.${o.up ? "gate_up" : "wi_relu"}`,
      file: "experts.wgsl",
      entry: o.up ? "gate_up" : "wi_relu",
      constants,
      params,
      // the module reads `up` through `weight()`, so ReLU binds something there too (it never reads it)
      buffers: { 2: o.topkIds, 3: o.slots, 4: o.x, 5: o.gate, 6: o.up ?? o.gate, 7: o.h },
      workgroups: (s) => s.t * o.topK * o.inter,
    }),
    await record(ctx, {
      label: `${o.label}.down`,
      file: "experts_down.wgsl",
      entry: "down_sum",
      constants,
      params,
      buffers: { 2: o.topkIds, 3: o.slots, 7: o.h, 8: o.topkW, 9: o.down, 10: o.y },
      workgroups: (s) => s.t * o.dim,
    }),
  ];
}
