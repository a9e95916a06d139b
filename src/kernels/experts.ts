/**
 * `shaders/experts.wgsl`: experts read from GPU slots through the slot table — SwiGLU (gate, up,
 * down), or without `up` ReLU (Switch's wi, wo), or gpt-oss's clamped SwiGLU over a fused gate_up with
 * biases — weighted and added to the residual stream. Each tier's copies are read in their own format
 * (bf16, int8, int4, mxfp4: src/quant/formats.ts).
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";
import { FORMAT_CODE, matrixLayout, type Precision } from "../quant/formats.ts";

const FIELDS = [
  "dim",
  "inter",
  "top_k",
  "experts",
  "layer",
  "lo_base",
  "hi_words",
  "lo_words",
  "f:swiglu_limit",
  "f:swiglu_alpha",
  "_pad0",
  "_pad1",
] as const;
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
   * gate, up: [slots, I, D]; down: [slots, D, I], each copy in its tier's format. Without `up` the
   * experts are ReLU MLPs (T5's DenseReluDense): `gate` holds wi and `down` wo. With
   * {@link ExpertsOptions.clampedSwiglu}, `gate` holds gpt-oss's fused gate_up [slots, 2I, D].
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
  /**
   * gpt-oss's experts: `gate` is the fused gate_up [2I, D] (row 2i gate i, row 2i + 1 up i), and it
   * and `down` carry a bias of one bf16 per row after their other regions (matrixLayout's `bias`);
   * h = (clamp(up, −limit, limit) + 1) · g · σ(alpha · g) with g = min(gate, limit), and
   * y += w · (down · h + b_down).
   */
  clampedSwiglu?: { readonly limit: number; readonly alpha: number };
}

/** Records gate/up (+SiLU·mul), wi (+ReLU) or gpt-oss's gate_up (+clamped SwiGLU), then down (+weighted sum +residual). */
export async function experts(ctx: KernelContext, o: ExpertsOptions): Promise<Dispatch[]> {
  if (o.dim % 2 || o.inter % 2) throw new RangeError(`experts ${o.label}: dimensions must be even`);
  const hi = o.formats[0];
  if (!hi) throw new RangeError(`experts ${o.label}: no format`);
  const lo = o.formats[1] ?? hi;
  const oss = o.clampedSwiglu;
  if (oss && o.up) throw new RangeError(`experts ${o.label}: gpt-oss's gate and up are one fused matrix`);
  const bias = oss !== undefined;
  // each half reads one shape: gate (and up) [I, D] or gpt-oss's gate_up [2I, D], then down [D, I]
  const halves = [
    { rows: oss ? 2 * o.inter : o.inter, cols: o.dim },
    { rows: o.dim, cols: o.inter },
  ].map(({ rows, cols }) => {
    // words of one matrix copy per tier
    const words = (f: Precision) => matrixLayout(f, rows, cols, bias).bytes / 4;
    return PARAMS.pack({
      dim: o.dim,
      inter: o.inter,
      top_k: o.topK,
      experts: o.experts,
      layer: o.layer,
      lo_base: o.highSlots * words(hi),
      hi_words: words(hi),
      lo_words: words(lo),
      swiglu_limit: oss?.limit ?? 0,
      swiglu_alpha: oss?.alpha ?? 0,
    });
  });
  const constants = { HI_FMT: FORMAT_CODE[hi], LO_FMT: FORMAT_CODE[lo] };
  const first = oss ? "gate_up_oss" : o.up ? "gate_up" : "wi_relu";
  return [
    await record(ctx, {
      label: `${o.label}.${first}`,
      file: "experts.wgsl",
      entry: first,
      constants,
      params: halves[0]!,
      // the module reads `up` through `weight()`, so ReLU and gpt-oss bind something there too (never read)
      buffers: { 2: o.topkIds, 3: o.slots, 4: o.x, 5: o.gate, 6: o.up ?? o.gate, 7: o.h },
      // gate_up and gpt-oss's: a workgroup per token-expert and pair of rows of h; wi_relu: per four rows
      workgroups: (s) => s.t * o.topK * Math.ceil(o.inter / (o.up || oss ? 2 : 4)),
    }),
    await record(ctx, {
      label: `${o.label}.down`,
      file: "experts_down.wgsl",
      entry: oss ? "down_sum_bias" : "down_sum",
      constants,
      params: halves[1]!,
      buffers: { 2: o.topkIds, 3: o.slots, 7: o.h, 8: o.topkW, 9: o.down, 10: o.y },
      // a workgroup per token and four rows of down
      workgroups: (s) => s.t * Math.ceil(o.dim / 4),
    }),
  ];
}
