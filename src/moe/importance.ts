/**
 * Expert importance as SwapMoE defines it, `Σ_{x∈X_i} ‖x‖ · G(x)_i · ‖E_i‖`: the GPU sums
 * ‖x‖·G(x)_i over the tokens the *unmasked* router sends to expert i (router.wgsl `accumulate`);
 * here those sums are read back in batches, decayed per token so a long generation adapts, and
 * multiplied by the expert's weight norm ‖E_i‖.
 *
 * @module
 */
import type { ExpertMatrix } from "../models/family.ts";
import type { ExpertStore } from "./expert_cache.ts";

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
   * Adds a batch of GPU statistics `[layers, experts, 4]` = (chosen, Σ‖x‖·G, hits, −) covering
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
      }
    }
  }

  /** Unmasked (token, choice) pairs seen. */
  get choices(): number {
    return this.#choices;
  }

  /** Share of unmasked (token, choice) pairs whose expert was resident; 1 before any token. */
  get hitRate(): number {
    return this.#choices > 0 ? this.#hits / this.#choices : 1;
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

function bf16Norm2(bytes: Uint8Array, rows: number, cols: number, sampleRows: number): number {
  const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const step = Math.max(1, Math.floor(rows / sampleRows));
  let sum = 0;
  let seen = 0;
  for (let r = 0; r < rows; r += step) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) {
      u[0] = u16[base + c]! << 16;
      sum += f[0]! * f[0]!;
    }
    seen++;
  }
  return (sum * rows) / seen;
}

/**
 * ‖E_i‖: the Frobenius norm of each expert's matrices, from the mapped bytes (`matrices` gives each
 * one's [rows, cols], in the store's order). Large experts are estimated from up to `sampleRows`
 * evenly spaced rows per matrix (exact for small ones), so that loading a many-gigabyte checkpoint
 * does not read every expert byte.
 */
export function expertNorms(
  store: ExpertStore,
  layers: number,
  experts: number,
  matrices: readonly ExpertMatrix[],
  sampleRows = 64,
): Float64Array[] {
  return Array.from({ length: layers }, (_, l) => {
    const out = new Float64Array(experts);
    for (let e = 0; e < experts; e++) {
      const parts = store.expert(l, e);
      out[e] = Math.sqrt(
        matrices.reduce((a, m, i) => a + bf16Norm2(parts[i]!, m.rows, m.cols, sampleRows), 0),
      );
    }
    return out;
  });
}
