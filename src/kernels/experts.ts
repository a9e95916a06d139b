/**
 * `shaders/experts.wgsl`: experts read from GPU slots through the slot table — SwiGLU (gate, up,
 * down), or without `up` ReLU (Switch's wi, wo), or gpt-oss's clamped SwiGLU over a fused gate_up with
 * biases — weighted and added to the residual stream. Each tier's copies are read in their own format
 * (bf16, int8, int4, mxfp4: src/quant/formats.ts).
 *
 * Two paths, both recorded and chosen per call by its row count T:
 * - GEMV (experts.wgsl, experts_down.wgsl): a workgroup per token-expert and a few rows, so each token
 *   reads its experts' weights; best for decode, where T·K rows touch about as many experts.
 * - grouped (experts_group.wgsl, experts_tiled.wgsl, experts_tiled_down.wgsl), for T > {@link GEMV_MAX_ROWS}:
 *   the token-expert rows are grouped by expert on the GPU, then tiled matmuls read each expert's weights
 *   once per tile of up to {@link EXPERT_TILE}`.tokens` of its rows (as llama.cpp's mul_mat_id and
 *   mlx-lm's gather over sorted indices do), and a last dispatch adds the weighted outputs into the
 *   residual.
 *
 * @module
 */
import { type Dispatch, type KernelContext, onlyWhen, paramsLayout, record } from "../gpu/dispatch.ts";
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
/** The Params of shaders/lib/expert_slots.wgsl, as each expert shader includes it. */
const PARAMS = paramsLayout("experts.wgsl", FIELDS);
for (
  const f of ["experts_down.wgsl", "experts_group.wgsl", "experts_tiled.wgsl", "experts_tiled_down.wgsl"]
) {
  paramsLayout(f, FIELDS);
}

/** Bit of a slot-table entry where the tier starts (shaders/experts.wgsl `TIER_SHIFT`). */
export const TIER_SHIFT = 28;

/** The slot-table entry of a copy in `slot` of `tier` (0 high, 1 low). */
export function slotEntry(tier: number, slot: number): number {
  return (tier << TIER_SHIFT) | slot;
}

/**
 * Calls of up to this many rows (decode steps of up to 16 sequences with short prompt chunks beside
 * them) run the GEMV kernels; longer ones (the default 64-row prefill chunks) the grouped path. Chosen
 * end to end on the H200 at the OLMoE shape (bench/e2e.ts, a 512-token prompt in 64-row chunks, two
 * rounds, docs/benchmarks.md): 32 prefills 2,259–2,264 tok/s bf16 and 2,275–2,281 int4, 64 only
 * 1,989–2,005 and 1,951 (16 as 32; decode unchanged). bench/kernels.ts alone ranks them the other way at
 * 64 rows (GEMV 1.30 ms per layer against 1.79 ms grouped at its best tile, int4 1.32 against 1.55): the
 * end-to-end figure is the one kept. (On lavapipe the two cross between 8 and 16 rows.)
 */
export const GEMV_MAX_ROWS = 32;

/**
 * Threads of a down workgroup (experts_down.wgsl `WG`): one token's four rows of D over its K experts,
 * so a thread's loads of one expert row are I / (per-word · WG) in a row, each waiting on memory: with
 * 64 threads, OLMoE's bf16 down made 8 experts × 8 such round trips a thread and ran at ~40 µs a layer
 * on the H200 (bench/profile.ts --ablate, 2026-12-03) against ~25 µs for gate_up, which reads twice the
 * bytes over 8 times the workgroups. 256 threads make it 2 a row.
 */
export const DOWN_THREADS = 256;
/**
 * Threads of the bf16 gate/up workgroups (`gate_up_bf16`): eight rows of weights (four of gate, the
 * same four of up), 32 threads a row.
 */
const GATE_UP8_THREADS = 256;
/** Threads of gate_up_int4: a group of 32 columns each, 64 groups a row at OLMoE's 2048. */
const GATE_UP_INT4_THREADS = 64;

/** The grouped path's tile: token-expert rows of one expert, and weight rows per workgroup. */
export interface TileShape {
  /** TILE of shaders/lib/expert_tiles.wgsl: a multiple of 4. */
  readonly tokens: number;
  /** BLOCK: a multiple of 8; gate_up's workgroups take half as many rows of gate and of up. */
  readonly rows: number;
}

/**
 * 64 token-expert rows × 128 weight rows: 256 threads, each accumulating 4 × 8 outputs, and 12 KiB of
 * workgroup memory (within WebGPU's default limits of 256 invocations and 16 KiB).
 */
export const EXPERT_TILE: TileShape = { tokens: 64, rows: 128 };

/** Threads of the grouping kernel's single workgroup, one per expert: the most experts the grouped path takes. */
export const GROUP_THREADS = 256;

/** Columns a tiled workgroup stages at a time (shaders/lib/expert_tiles.wgsl `BK`): whole octets. */
const STAGE_COLUMNS = 16;

/** Most tiles the routing of `rows` token-expert rows over `experts` experts makes: an expert of c rows has ceil(c / tile). */
function maxTiles(rows: number, experts: number, tile: number): number {
  return Math.ceil(rows / tile) + Math.min(experts, rows);
}

/**
 * Words of the grouped path's two scratch buffers for calls of up to `rows` rows: `yk` [rows·K, D] f32
 * (each token-expert's down projection, before the weighted sum) and `route` (experts_group.wgsl: the
 * tile count, the rows grouped by expert, three words per tile). Undefined where the grouped path never
 * runs: no call longer than {@link GEMV_MAX_ROWS}, or more experts than {@link GROUP_THREADS}. `tile` is
 * for benchmarks.
 */
export function groupedScratch(
  o: { rows: number; topK: number; experts: number; dim: number },
  tile: TileShape = EXPERT_TILE,
): { yk: number; route: number } | undefined {
  if (o.rows <= GEMV_MAX_ROWS || o.experts > GROUP_THREADS) return undefined;
  const tk = o.rows * o.topK;
  return { yk: tk * o.dim, route: 1 + tk + 3 * maxTiles(tk, o.experts, tile.tokens) };
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
   * y += w · (down · h + b_down). They take the GEMV path only.
   */
  clampedSwiglu?: { readonly limit: number; readonly alpha: number };
  /**
   * The grouped path's scratch, of {@link groupedScratch}'s words: with it, calls of more than
   * {@link GEMV_MAX_ROWS} rows take the grouped path; without it, every call the GEMV path.
   */
  grouped?: { yk: GPUBuffer; route: GPUBuffer };
  /** Threads of the GEMV path's down workgroups (default {@link DOWN_THREADS}; benchmarks compare). */
  downThreads?: number;
}

/**
 * The params of each half (gate/up, then down) and the override constants every expert dispatch of a
 * layer shares.
 */
function shared(o: ExpertsOptions) {
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
  const pair: [ArrayBuffer, ArrayBuffer] = [halves[0]!, halves[1]!];
  return { halves: pair, formats: { HI_FMT: FORMAT_CODE[hi], LO_FMT: FORMAT_CODE[lo] } };
}

/**
 * Records the experts of one MoE layer: the GEMV path, and with {@link ExpertsOptions.grouped} the
 * grouped path too, each launching nothing on the calls that the other takes. gpt-oss's experts
 * (`clampedSwiglu`) have no grouped kernels yet: every call of theirs takes the GEMV path.
 */
export async function experts(ctx: KernelContext, o: ExpertsOptions): Promise<Dispatch[]> {
  const gemv = await expertsGemv(ctx, o);
  if (!o.grouped || o.clampedSwiglu) return gemv;
  return [
    ...gemv.map((d) => onlyWhen(d, (s) => s.t <= GEMV_MAX_ROWS)),
    ...(await expertsGrouped(ctx, o)).map((d) => onlyWhen(d, (s) => s.t > GEMV_MAX_ROWS)),
  ];
}

/**
 * Records the GEMV path for every call: gate/up (+SiLU·mul), wi (+ReLU) or gpt-oss's gate_up (+clamped
 * SwiGLU), then down (+weighted sum +residual).
 */
export async function expertsGemv(ctx: KernelContext, o: ExpertsOptions): Promise<Dispatch[]> {
  const { halves, formats: constants } = shared(o);
  const oss = o.clampedSwiglu;
  const first = oss ? "gate_up_oss" : o.up ? "gate_up" : "wi_relu";
  // every copy bf16, or every copy int4: the entries that load a vec4 of words at a time where the rows
  // allow it (int4: whole groups of 32 columns in both halves, and every copy's words a multiple of 4)
  const only = (f: Precision) => !oss && o.formats.every((x) => x === f);
  const int4 = only("int4") && o.dim % 32 === 0 && o.inter % 32 === 0 &&
    matrixLayout("int4", o.inter, o.dim).bytes % 16 === 0 &&
    matrixLayout("int4", o.dim, o.inter).bytes % 16 === 0;
  const gateUp8 = o.up !== undefined && ((only("bf16") && o.dim % 8 === 0) || int4);
  const down8 = (only("bf16") && o.inter % 8 === 0) || int4;
  const fast = int4 ? "int4" : "bf16";
  return [
    gateUp8
      ? await record(ctx, {
        label: `${o.label}.gate_up`,
        file: "experts.wgsl",
        entry: `gate_up_${fast}`,
        constants: { ...constants, WG: int4 ? GATE_UP_INT4_THREADS : GATE_UP8_THREADS },
        params: halves[0],
        buffers: { 2: o.topkIds, 3: o.slots, 7: o.h, 8: o.gate, 9: o.up!, 10: o.x },
        // a workgroup per token-expert and four rows of h
        workgroups: (s) => s.t * o.topK * Math.ceil(o.inter / 4),
      })
      : await record(ctx, {
        label: `${o.label}.${first}`,
        file: "experts.wgsl",
        entry: first,
        constants,
        params: halves[0],
        // the module reads `up` through `weight()`, so ReLU and gpt-oss bind something there too (never read)
        buffers: { 2: o.topkIds, 3: o.slots, 4: o.x, 5: o.gate, 6: o.up ?? o.gate, 7: o.h },
        // gate_up and gpt-oss's: a workgroup per token-expert and pair of rows of h; wi_relu: per four rows
        workgroups: (s) => s.t * o.topK * Math.ceil(o.inter / (o.up || oss ? 2 : 4)),
      }),
    await record(ctx, {
      label: `${o.label}.down`,
      file: "experts_down.wgsl",
      entry: down8 ? `down_sum_${fast}` : oss ? "down_sum_bias" : "down_sum",
      constants: { ...constants, WG: o.downThreads ?? DOWN_THREADS },
      params: halves[1],
      buffers: down8
        ? { 2: o.topkIds, 3: o.slots, 8: o.topkW, 10: o.y, 11: o.down, 12: o.h }
        : { 2: o.topkIds, 3: o.slots, 7: o.h, 8: o.topkW, 9: o.down, 10: o.y },
      // a workgroup per token and four rows of down
      workgroups: (s) => s.t * Math.ceil(o.dim / 4),
    }),
  ];
}

/**
 * Records the grouped path for every call (it needs {@link ExpertsOptions.grouped}): the rows grouped by
 * expert into tiles, the tiled gate/up (or wi) into h, the tiled down into yk, and the weighted sum of
 * yk into y. The tiled dispatches are sized for the most tiles any routing of the call's rows makes;
 * workgroups past the real count exit at once. `tile` is for benchmarks.
 */
export async function expertsGrouped(
  ctx: KernelContext,
  o: ExpertsOptions,
  tile: TileShape = EXPERT_TILE,
): Promise<Dispatch[]> {
  const g = o.grouped;
  if (!g) throw new RangeError(`experts ${o.label}: the grouped path needs its scratch buffers`);
  if (o.experts > GROUP_THREADS) {
    throw new RangeError(
      `experts ${o.label}: ${o.experts} experts exceed the grouped path's ${GROUP_THREADS}`,
    );
  }
  const threads = (tile.tokens / 4) * (tile.rows / 8);
  const bytes = 4 * STAGE_COLUMNS * (tile.tokens + tile.rows) + 4 * tile.tokens;
  if (tile.tokens % 4 || tile.rows % 8 || threads > 256 || bytes > 16384) {
    throw new RangeError(
      `experts ${o.label}: a tile of ${tile.tokens} × ${tile.rows} takes ${threads} threads and ${bytes} bytes of workgroup memory, more than 256 and 16384`,
    );
  }
  // without gpt-oss the two halves hold as many words: one params serves all but down
  const { halves: [params, downParams], formats } = shared(o);
  const tiles = (t: number) => maxTiles(t * o.topK, o.experts, tile.tokens);
  const constants = { ...formats, TILE: tile.tokens, BLOCK: tile.rows, BK: STAGE_COLUMNS };
  // gate_up's workgroups take rows/2 rows of gate and the same of up; wi's and down's `rows` rows
  const interBlocks = Math.ceil(o.inter / (o.up ? tile.rows / 2 : tile.rows));
  return [
    await record(ctx, {
      label: `${o.label}.group`,
      file: "experts_group.wgsl",
      entry: "group",
      constants: { WG: GROUP_THREADS, TILE: tile.tokens },
      params,
      buffers: { 2: o.topkIds, 3: o.slots, 11: g.route },
      workgroups: () => 1,
    }),
    await record(ctx, {
      label: `${o.label}.${o.up ? "gate_up" : "wi_relu"}_tiled`,
      file: "experts_tiled.wgsl",
      entry: o.up ? "gate_up_tiled" : "wi_relu_tiled",
      constants,
      params,
      // as in the GEMV path, ReLU binds `gate` in up's place
      buffers: { 4: o.x, 5: o.gate, 6: o.up ?? o.gate, 7: o.h, 11: g.route },
      workgroups: (s) => tiles(s.t) * interBlocks,
    }),
    await record(ctx, {
      label: `${o.label}.down_tiled`,
      file: "experts_tiled_down.wgsl",
      entry: "down_tiled",
      constants,
      params: downParams,
      buffers: { 7: o.h, 9: o.down, 11: g.route, 12: g.yk },
      workgroups: (s) => tiles(s.t) * Math.ceil(o.dim / tile.rows),
    }),
    await record(ctx, {
      label: `${o.label}.combine`,
      file: "experts_group.wgsl",
      entry: "combine",
      constants: { WG: GROUP_THREADS },
      params,
      buffers: { 2: o.topkIds, 3: o.slots, 8: o.topkW, 10: o.y, 12: g.yk },
      // a thread per element of y
      workgroups: (s) => Math.ceil((s.t * o.dim) / GROUP_THREADS),
    }),
  ];
}
