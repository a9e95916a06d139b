/**
 * Expert importance as SwapMoE defines it, `Σ_{x∈X_i} ‖x‖ · G(x)_i · ‖E_i‖`: the GPU sums
 * ‖x‖·G(x)_i over the tokens the *unmasked* router sends to expert i (router.wgsl `accumulate`);
 * here those sums are read back in batches, decayed per token so a long generation adapts, and
 * multiplied by the expert's weight norm ‖E_i‖.
 *
 * @module
 */
import type { ExpertMatrix } from "../models/family.ts";
import { E2M1, GROUP, matrixLayout, type Precision } from "../quant/formats.ts";
import type { ExpertStore, Piece } from "./expert_cache.ts";

/** Decayed importance, usage counts and hits per [MoE layer][expert]. */
export class Importance {
  readonly layers: number;
  readonly experts: number;
  /** Per-token decay of the importance sums. */
  readonly decay: number;
  /** ‖E_i‖ per [layer][expert]. */
  readonly norms: Float64Array[];
  /** Decayed Σ ‖x‖·G(x)_i. */
  readonly mass: Float64Array[];
  /** Times the unmasked router chose each expert since the engine started. */
  readonly usage: Float64Array[];
  #choices = 0;
  #hits = 0;
  #highHits = 0;

  /** A tracker for `layers` × `experts` with weight norms `norms`. */
  constructor(layers: number, experts: number, decay: number, norms: Float64Array[]) {
    this.layers = layers;
    this.experts = experts;
    this.decay = decay;
    this.norms = norms;
    this.mass = Array.from({ length: layers }, () => new Float64Array(experts));
    this.usage = Array.from({ length: layers }, () => new Float64Array(experts));
  }

  /**
   * Adds a batch of GPU statistics `[layers, experts, 4]` = (chosen, Σ‖x‖·G, hits, high hits) covering
   * `tokens` tokens; older mass decays by decay^tokens.
   */
  add(stats: Float32Array, tokens: number): void {
    const f = this.decay ** tokens;
    for (let l = 0; l < this.layers; l++) {
      const m = this.mass[l]!;
      const u = this.usage[l]!;
      for (let e = 0; e < this.experts; e++) {
        const o = (l * this.experts + e) * 4;
        m[e] = m[e]! * f + stats[o + 1]!;
        u[e] = u[e]! + stats[o]!;
        this.#choices += stats[o]!;
        this.#hits += stats[o + 2]!;
        this.#highHits += stats[o + 3]!;
      }
    }
  }

  /** Unmasked (token, choice) pairs seen. */
  get choices(): number {
    return this.#choices;
  }

  /** Share of unmasked (token, choice) pairs whose expert had a resident copy; 1 before any token. */
  get hitRate(): number {
    return this.#choices > 0 ? this.#hits / this.#choices : 1;
  }

  /** Share of unmasked (token, choice) pairs whose expert had a copy at the high tier; 1 before any token. */
  get highHitRate(): number {
    return this.#choices > 0 ? this.#highHits / this.#choices : 1;
  }

  /** Importance of layer `l`'s experts: decayed mass × ‖E_i‖. */
  score(l: number): Float64Array {
    const m = this.mass[l]!;
    const n = this.norms[l]!;
    return m.map((v, e) => v * n[e]!);
  }

  /** {@link score} for every layer. */
  scores(): Float64Array[] {
    return Array.from({ length: this.layers }, (_, l) => this.score(l));
  }
}

/** The piece of a stored matrix holding byte `at` of its layout, and where in that piece it is. */
function locate(pieces: readonly Piece[], at: number): { bytes: Uint8Array; at: number } {
  for (const p of pieces) {
    if (at >= p.at && at < p.at + p.bytes.byteLength) return { bytes: p.bytes, at: at - p.at };
  }
  throw new RangeError(`Internal: byte ${at} of an expert matrix is in no piece`);
}

/**
 * Σ w² over a [rows, cols] matrix stored at `p` (bf16, or mxfp4 as gpt-oss publishes it), from up to
 * `sampleRows` evenly spaced rows scaled to all rows (exact when every row is sampled).
 */
function norm2(
  p: Precision,
  pieces: readonly Piece[],
  rows: number,
  cols: number,
  sampleRows: number,
): number {
  const step = Math.max(1, Math.floor(rows / sampleRows));
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const layout = matrixLayout(p, rows, cols);
  let sum = 0;
  let seen = 0;
  for (let r = 0; r < rows; r += step) {
    if (p === "bf16") {
      const { bytes, at } = locate(pieces, r * cols * 2);
      const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset + at, cols);
      for (let c = 0; c < cols; c++) {
        u[0] = u16[c]! << 16;
        sum += f[0]! * f[0]!;
      }
    } else if (p === "mxfp4") {
      const codes = locate(pieces, (r * cols) / 2);
      const exps = locate(pieces, layout.scalesAt + (r * cols) / GROUP);
      for (let c = 0; c < cols; c++) {
        const code = (codes.bytes[codes.at + (c >> 1)]! >> (4 * (c & 1))) & 15;
        const v = E2M1[code]! * 2 ** (exps.bytes[exps.at + Math.floor(c / GROUP)]! - 127);
        sum += v * v;
      }
    } else throw new RangeError(`Internal: expert norms read stored bf16 or mxfp4, not ${p}`);
    seen++;
  }
  return (sum * rows) / seen;
}

/**
 * ‖E_i‖: the Frobenius norm of each expert's matrices, from the stored bytes at the checkpoint's
 * precision `native` (`matrices` gives each one's [rows, cols], in the store's order). Large experts
 * are estimated from up to `sampleRows` evenly spaced rows per matrix (exact for small ones), so that
 * loading a many-gigabyte checkpoint does not read every expert byte.
 */
export function expertNorms(
  store: ExpertStore,
  layers: number,
  experts: number,
  matrices: readonly ExpertMatrix[],
  native: Precision = "bf16",
  sampleRows = 64,
): Float64Array[] {
  return Array.from({ length: layers }, (_, l) => {
    const out = new Float64Array(experts);
    for (let e = 0; e < experts; e++) {
      const parts = store.expert(l, e, native);
      out[e] = Math.sqrt(
        matrices.reduce((a, m, i) => a + norm2(native, parts[i]!, m.rows, m.cols, sampleRows), 0),
      );
    }
    return out;
  });
}
