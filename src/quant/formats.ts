/**
 * Expert weight formats: how one [rows, cols] matrix is laid out in bytes at each precision, how a
 * checkpoint's bf16 matrix is quantized into it, and (for tests and references) how it dequantizes.
 *
 * Quantized formats are group-wise along each row: every `group` consecutive weights of a row share an
 * f16 scale (and, for `int4`, an f16 minimum). A matrix is three regions, each a multiple of 4 bytes,
 * which the expert kernels (shaders/experts.wgsl) read as `u32` words:
 *
 *   q       [rows, cols] codes: int8 one byte each (element j in byte j % 4 of word j / 4, two's
 *           complement), int4 one nibble each (element j in bits 4·(j % 8) of word j / 8)
 *   scales  [rows, cols / group] f16, two per word (group g in the low half of word g / 2 when g is even)
 *   mins    [rows, cols / group] f16 (int4 only), as the scales
 *
 * A weight is `code · scale` (int8, symmetric, codes in [−127, 127]) or `code · scale + min` (int4,
 * codes in [0, 15]). Quantization rounds to nearest against the f16-rounded scale and minimum, so the
 * stored values dequantize exactly as the kernels compute them.
 *
 * `mxfp4` is the OCP microscaling format gpt-oss publishes its experts in: e2m1 codes, two per byte (the
 * even element in the low nibble), and a u8 e8m0 exponent per group of 32 (scale 2^(e − 127)), kept as
 * published; its regions are the codes, then the exponents (one byte per group).
 *
 * A matrix may carry a bias (gpt-oss's experts): `rows` bf16 values after the other regions.
 *
 * @module
 */
import { OptionError } from "../errors.ts";

/** A precision an expert copy can be held at. */
export type Precision = "bf16" | "int8" | "int4" | "mxfp4";

/** Every precision, from the most bytes to the fewest. */
export const PRECISIONS: readonly Precision[] = ["bf16", "int8", "int4", "mxfp4"];

/** The precisions a checkpoint's bf16 experts can be quantized to (mxfp4 is read as published). */
export const QUANTIZED: readonly Precision[] = ["int8", "int4"];

/** Each precision's code in the expert kernels (shaders/experts.wgsl `BF16`, `INT8`, `INT4`, `MXFP4`). */
export const FORMAT_CODE: Readonly<Record<Precision, number>> = { bf16: 0, int8: 1, int4: 2, mxfp4: 3 };

/** Weights per scale group (along a row) of the quantized formats. */
export const GROUP = 32;
/** log2 of {@link GROUP}: a weight's group within its row is `col >> GROUP_SHIFT`. */
const GROUP_SHIFT = Math.log2(GROUP);

/** The byte layout of one matrix at one precision. */
export interface MatrixLayout {
  /** Bytes of the codes region (bf16: the whole matrix). */
  readonly qBytes: number;
  /** Where the scales start, and their bytes (0 for bf16). */
  readonly scalesAt: number;
  readonly scaleBytes: number;
  /** Where the minimums start, and their bytes (0 unless int4). */
  readonly minsAt: number;
  readonly minBytes: number;
  /** Where the bias starts, and its bytes (0 without a bias). */
  readonly biasAt: number;
  readonly biasBytes: number;
  /** All of it. */
  readonly bytes: number;
}

const align4 = (n: number) => Math.ceil(n / 4) * 4;

/** Bits per weight of a precision's codes. */
export function codeBits(p: Precision): number {
  return p === "bf16" ? 16 : p === "int8" ? 8 : 4;
}

/** Bytes per group of a precision's scale (f16, or mxfp4's u8 exponent); 0 for bf16. */
function scaleBytesPerGroup(p: Precision): number {
  return p === "bf16" ? 0 : p === "mxfp4" ? 1 : 2;
}

/** Whether `p` has a minimum per group. */
function hasMin(p: Precision): boolean {
  return p === "int4";
}

/**
 * The layout of a [rows, cols] matrix at precision `p`, with a bias of `rows` bf16 values when `bias`.
 * @throws {OptionError} when a quantized format cannot hold the shape (`cols` not a multiple of the group)
 */
export function matrixLayout(p: Precision, rows: number, cols: number, bias = false): MatrixLayout {
  if (p !== "bf16" && cols % GROUP !== 0) {
    throw new OptionError(
      `Invalid expertPrecision: ${p} quantizes rows in groups of ${GROUP} weights, and this model's expert matrices are ${cols} wide: use bf16`,
    );
  }
  const qBytes = align4((rows * cols * codeBits(p)) / 8);
  const scaleBytes = align4(rows * (cols / GROUP) * scaleBytesPerGroup(p));
  const minBytes = hasMin(p) ? scaleBytes : 0;
  const biasAt = qBytes + scaleBytes + minBytes;
  const biasBytes = bias ? align4(rows * 2) : 0;
  return {
    qBytes,
    scalesAt: qBytes,
    scaleBytes,
    minsAt: qBytes + scaleBytes,
    minBytes,
    biasAt,
    biasBytes,
    bytes: biasAt + biasBytes,
  };
}

const f16 = new Float16Array(1);
/** `x` rounded to the nearest f16, as a number. */
function toF16(x: number): number {
  f16[0] = x;
  return f16[0]!;
}

const f32 = new Float32Array(1);
const f32bits = new Uint32Array(f32.buffer);
/** The f32 value of bf16 bits `b`. */
export function bf16ToF32(b: number): number {
  f32bits[0] = b << 16;
  return f32[0]!;
}

/**
 * Quantizes a [rows, cols] bf16 matrix (its raw little-endian bytes, as stored in the checkpoint) to
 * precision `p`; returns the matrix's bytes in {@link matrixLayout}. bf16 is returned as a copy.
 */
export function quantizeMatrix(
  p: Precision,
  bf16: Uint8Array,
  rows: number,
  cols: number,
): Uint8Array<ArrayBuffer> {
  const layout = matrixLayout(p, rows, cols);
  const out = new Uint8Array(layout.bytes);
  if (p === "bf16") {
    out.set(bf16.subarray(0, layout.bytes));
    return out;
  }
  const src = new Uint16Array(bf16.buffer, bf16.byteOffset, rows * cols);
  const groups = rows * (cols / GROUP);
  const scales = new Float16Array(out.buffer, layout.scalesAt, groups);
  if (p === "int8") quantizeInt8(src, rows, cols, out, scales);
  else quantizeInt4(src, rows, cols, out, scales, new Float16Array(out.buffer, layout.minsAt, groups));
  return out;
}

// The two loops below are written for speed (a first load quantizes every expert: 12 GiB for OLMoE):
// a row's weights are widened to f32 at once, then each group's scale is taken, then the row is coded
// in one pass. They round half up as `Math.floor(x + 0.5)`, which V8 runs in half the time of
// `Math.round` (bench/quant_bench.ts); the two differ only where `x + 0.5` itself rounds, within an ulp
// below a half. A NaN code (a NaN weight, or ±inf · 0) stores 0.

/** A bf16 matrix read a row at a time: the row widened to f32, and each group's least and greatest weight. */
class RowReader {
  readonly #src: Uint16Array;
  readonly #bits: Uint32Array;
  /** The row read last, in f32 (bf16 bits are the high half of an f32's). */
  readonly w: Float32Array;
  /** Per group of the row: its least and greatest weight (NaN weights skipped; ±inf with none). */
  readonly lo: Float64Array;
  readonly hi: Float64Array;

  constructor(src: Uint16Array, cols: number) {
    this.#src = src;
    this.#bits = new Uint32Array(cols);
    this.w = new Float32Array(this.#bits.buffer);
    this.lo = new Float64Array(cols / GROUP);
    this.hi = new Float64Array(cols / GROUP);
  }

  /** Reads row `r`. */
  read(r: number): void {
    const bits = this.#bits, w = this.w, src = this.#src, cols = bits.length;
    const at = r * cols;
    for (let c = 0; c < cols; c++) bits[c] = src[at + c]! << 16;
    for (let g = 0; g < this.lo.length; g++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (let j = g * GROUP, end = j + GROUP; j < end; j++) {
        const v = w[j]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      this.lo[g] = lo;
      this.hi[g] = hi;
    }
  }
}

/** int8 codes and scales of a [rows, cols] bf16 matrix: `code = clamp(round(w / scale), −127, 127)`. */
function quantizeInt8(
  src: Uint16Array,
  rows: number,
  cols: number,
  out: Uint8Array,
  scales: Float16Array,
): void {
  const row = new RowReader(src, cols);
  const { w, lo, hi } = row;
  const groups = cols / GROUP;
  const inv = new Float64Array(groups);
  for (let r = 0; r < rows; r++) {
    row.read(r);
    for (let g = 0; g < groups; g++) {
      const scale = toF16(Math.max(Math.abs(lo[g]!), Math.abs(hi[g]!)) / 127);
      scales[r * groups + g] = scale;
      inv[g] = scale > 0 ? 1 / scale : 0;
    }
    const at = r * cols;
    for (let c = 0; c < cols; c++) {
      const q = Math.floor(w[c]! * inv[c >> GROUP_SHIFT]! + 0.5);
      out[at + c] = (q > 127 ? 127 : q < -127 ? -127 : q) & 0xff;
    }
  }
}

/**
 * int4 codes, scales and minimums of a [rows, cols] bf16 matrix: `code = clamp(round((w − min) / scale),
 * 0, 15)`, two codes a byte (the even element in the low nibble).
 */
function quantizeInt4(
  src: Uint16Array,
  rows: number,
  cols: number,
  out: Uint8Array,
  scales: Float16Array,
  mins: Float16Array,
): void {
  const row = new RowReader(src, cols);
  const { w, lo, hi } = row;
  const groups = cols / GROUP;
  const inv = new Float64Array(groups);
  const min = new Float64Array(groups);
  for (let r = 0; r < rows; r++) {
    row.read(r);
    for (let g = 0; g < groups; g++) {
      const m = toF16(lo[g]!);
      const scale = toF16((hi[g]! - m) / 15);
      scales[r * groups + g] = scale;
      mins[r * groups + g] = m;
      min[g] = m;
      inv[g] = scale > 0 ? 1 / scale : 0;
    }
    const at = r * cols;
    for (let c = 0; c < cols; c += 2) {
      const g = c >> GROUP_SHIFT;
      const q0 = Math.floor((w[c]! - min[g]!) * inv[g]! + 0.5);
      const q1 = Math.floor((w[c + 1]! - min[g]!) * inv[g]! + 0.5);
      out[(at + c) >> 1] = ((q0 > 15 ? 15 : q0 < 0 ? 0 : q0) & 15) |
        (((q1 > 15 ? 15 : q1 < 0 ? 0 : q1) & 15) << 4);
    }
  }
}

/** The e2m1 values of the 16 codes (sign in bit 3): 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives. */
export const E2M1: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** The weights of a [rows, cols] matrix stored at precision `p`, in f32, as the kernels compute them. */
export function dequantizeMatrix(p: Precision, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  const layout = matrixLayout(p, rows, cols);
  const out = new Float32Array(rows * cols);
  if (p === "bf16") {
    const src = new Uint16Array(bytes.buffer, bytes.byteOffset, rows * cols);
    for (let i = 0; i < out.length; i++) out[i] = bf16ToF32(src[i]!);
    return out;
  }
  const groups = cols / GROUP;
  const copy = bytes.slice(0, layout.bytes); // aligned views
  if (p === "mxfp4") {
    for (let i = 0; i < out.length; i++) {
      const code = (copy[i >> 1]! >> (4 * (i & 1))) & 15;
      const e = copy[layout.scalesAt + Math.floor(i / GROUP)]!;
      out[i] = E2M1[code]! * 2 ** (e - 127);
    }
    return out;
  }
  const scales = new Float16Array(copy.buffer, layout.scalesAt, rows * groups);
  const mins = hasMin(p) ? new Float16Array(copy.buffer, layout.minsAt, rows * groups) : undefined;
  for (let i = 0; i < out.length; i++) {
    const gi = Math.floor(i / GROUP);
    const scale = scales[gi]!;
    if (p === "int8") {
      const b = copy[i]!;
      out[i] = (b > 127 ? b - 256 : b) * scale;
    } else {
      const q = (copy[i >> 1]! >> (4 * (i & 1))) & 15;
      out[i] = q * scale + mins![gi]!;
    }
  }
  return out;
}

/** The `expertPrecision` values for a model whose checkpoint stores experts at `native`. */
export function precisionChoices(native: Precision): string[] {
  if (native !== "bf16") return [native];
  return ["bf16", "int8", "int4", "bf16+int8", "bf16+int4", "int8+int4"];
}

/**
 * Parses an `expertPrecision` value — one precision, or a high+low pair such as `"bf16+int4"` — into
 * the tiers, high first, for a model whose checkpoint stores experts at `native`; without `native`
 * (before a model's config is read), any value some model takes.
 * @throws {OptionError} naming the accepted values, for an unknown precision, a pair whose high tier
 * is not above its low tier, or a precision this model's experts cannot be held at
 */
export function parsePrecision(value: unknown, native?: Precision): Precision[] {
  const choices = native
    ? precisionChoices(native)
    : [...new Set([...precisionChoices("bf16"), ...precisionChoices("mxfp4")])];
  const accepted = choices.map((c) => `"${c}"`).join(", ");
  if (typeof value !== "string") {
    throw new OptionError(`Invalid expertPrecision: ${JSON.stringify(value)}, expected one of ${accepted}`);
  }
  const parts = value.split("+").map((p) => p.trim());
  if (parts.length > 2 || !parts.every((p) => (PRECISIONS as readonly string[]).includes(p))) {
    throw new OptionError(`Invalid expertPrecision: "${value}", expected one of ${accepted}`);
  }
  const tiers = parts as Precision[];
  if (tiers.length === 2 && PRECISIONS.indexOf(tiers[0]!) >= PRECISIONS.indexOf(tiers[1]!)) {
    throw new OptionError(
      `Invalid expertPrecision: "${value}", the high tier comes first and must hold more bits than the low tier, e.g. "bf16+int4"`,
    );
  }
  if (!choices.includes(tiers.join("+"))) {
    throw new OptionError(
      native
        ? `Invalid expertPrecision: "${value}", this model's experts are stored in ${native}: expected one of ${accepted}`
        : `Invalid expertPrecision: "${value}", expected one of ${accepted}`,
    );
  }
  return tiers;
}
