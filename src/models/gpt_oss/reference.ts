/**
 * gpt-oss on the CPU, in f64, read top to bottom as transformers' GptOssForCausalLM: the reference the
 * GPU kernels are tested against. {@link dequantizeMxfp4} and {@link expertForward} are one routed
 * expert exactly as transformers computes it on the dequantized weights; {@link cpuForward} is the
 * whole model (tests only: it is slow and holds every expert dequantized).
 *
 * Axes: T tokens, D hidden, I expert width, E experts, K experts per token, H / Hkv heads, hd head
 * width, V vocabulary, G = in / 32 MXFP4 blocks per row.
 *
 * @module
 */
import { ropeTable, yarnRopeTable } from "../../kernels/attention.ts";
import type { GptOssSpec } from "./config.ts";
import { expertRanges, type GptOssNames, MXFP4_BLOCK, MXFP4_BLOCK_BYTES } from "./names.ts";

/**
 * The 16 values of an e2m1 (FP4) code: bit 3 the sign, then 2 exponent bits and 1 mantissa bit.
 * torch (transformers' integrations/mxfp4.py): FP4_VALUES = [+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0,
 * +6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
 */
export const E2M1: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** An e8m0 scale byte's factor: 2^(s − 127). torch: scales.to(torch.int32) - 127, then torch.ldexp. */
export function e8m0(s: number): number {
  return 2 ** (s - 127);
}

/**
 * Dequantizes MXFP4 rows: blocks [rows, G, 16] u8 and scales [rows, G] u8 → [rows, G·32] f32, row-major.
 * Within block g of a row, byte b holds elements 32g + 2b (its low nibble) and 32g + 2b + 1 (its high
 * nibble), each times the block's scale.
 * torch (convert_moe_packed_tensors): sub[:, 0::2] = lut[blk & 0x0F]; sub[:, 1::2] = lut[blk >> 4];
 *   torch.ldexp(sub, exp, out=sub)
 * The result is [out, in] as stored (transformers then transposes it to its [in, out] parameter).
 */
export function dequantizeMxfp4(
  blocks: Uint8Array,
  scales: Uint8Array,
  rows: number,
  cols: number,
): Float32Array {
  const G = cols / MXFP4_BLOCK;
  if (!Number.isInteger(G) || blocks.length !== rows * G * MXFP4_BLOCK_BYTES || scales.length !== rows * G) {
    throw new RangeError(
      `dequantizeMxfp4: ${blocks.length} block bytes and ${scales.length} scales for [${rows}, ${cols}]`,
    );
  }
  const out = new Float32Array(rows * cols);
  for (let rg = 0; rg < rows * G; rg++) {
    const scale = e8m0(scales[rg]!);
    for (let b = 0; b < MXFP4_BLOCK_BYTES; b++) {
      const byte = blocks[rg * MXFP4_BLOCK_BYTES + b]!;
      out[rg * MXFP4_BLOCK + 2 * b] = E2M1[byte & 0x0f]! * scale;
      out[rg * MXFP4_BLOCK + 2 * b + 1] = E2M1[byte >> 4]! * scale;
    }
  }
  return out;
}

/** The little-endian bf16 values of `bytes` as f32 (any byte offset). */
export function bf16ToF32(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length / 2);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < out.length; i++) u[i] = (bytes[2 * i]! | (bytes[2 * i + 1]! << 8)) << 16;
  return out;
}

/** The clamped SwiGLU's settings (`swiglu_limit`, and transformers' constant alpha 1.702). */
export interface SwigluOptions {
  readonly limit: number;
  readonly alpha: number;
}

/**
 * gpt-oss's activation of one (gate, up) pair.
 * torch: gate = gate.clamp(min=None, max=self.limit); up = up.clamp(min=-self.limit, max=self.limit)
 *        glu = gate * torch.sigmoid(gate * self.alpha); gated_output = (up + 1) * glu
 */
export function clampedSwiglu(gate: number, up: number, o: SwigluOptions): number {
  const g = Math.min(gate, o.limit);
  const u = Math.min(Math.max(up, -o.limit), o.limit);
  return (u + 1) * (g / (1 + Math.exp(-o.alpha * g)));
}

/** One expert's weights, dequantized, as stored: rows are outputs. */
export interface ExpertWeights {
  /** [2I, D]: row 2j is gate j, row 2j + 1 is up j (interleaved). */
  readonly gateUp: Float32Array;
  /** [2I], interleaved as the rows. */
  readonly gateUpBias: Float32Array;
  /** [D, I]. */
  readonly down: Float32Array;
  /** [D]. */
  readonly downBias: Float32Array;
}

/**
 * One expert on one token, y [D] = W_down · act(W_gateUp · x + b_gateUp) + b_down, with act pairing
 * rows 2j (gate) and 2j + 1 (up). The router's weight is applied by the caller.
 * torch: gate_up = current_state @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
 *        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
 *        out = gated_output @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
 */
export function expertForward(x: ArrayLike<number>, w: ExpertWeights, o: SwigluOptions): Float64Array {
  const D = x.length;
  const I = w.gateUpBias.length / 2;
  const h = new Float64Array(I);
  for (let j = 0; j < I; j++) {
    let gate = w.gateUpBias[2 * j]!;
    let up = w.gateUpBias[2 * j + 1]!;
    for (let d = 0; d < D; d++) {
      gate += w.gateUp[2 * j * D + d]! * x[d]!;
      up += w.gateUp[(2 * j + 1) * D + d]! * x[d]!;
    }
    h[j] = clampedSwiglu(gate, up, o);
  }
  const y = new Float64Array(D);
  for (let d = 0; d < D; d++) {
    let acc = w.downBias[d]!;
    for (let j = 0; j < I; j++) acc += w.down[d * I + j]! * h[j]!;
    y[d] = acc;
  }
  return y;
}

/** A tensor's bytes by name (e.g. `Checkpoint.bytes`). */
export type TensorBytes = (name: string) => Uint8Array;

/** Expert `e` of decoder layer `layer`, cut from the fused tensors by {@link expertRanges} and dequantized. */
export function readExpert(
  bytes: TensorBytes,
  spec: GptOssSpec,
  names: GptOssNames,
  layer: number,
  e: number,
): ExpertWeights {
  const { hiddenSize: D, intermediateSize: I } = spec;
  const r = expertRanges(spec, names, layer, e);
  const cut = (p: { tensor: string; byteOffset: number; byteLength: number }) =>
    bytes(p.tensor).subarray(p.byteOffset, p.byteOffset + p.byteLength);
  return {
    gateUp: dequantizeMxfp4(cut(r.gateUpBlocks), cut(r.gateUpScales), 2 * I, D),
    gateUpBias: bf16ToF32(cut(r.gateUpBias)),
    down: dequantizeMxfp4(cut(r.downBlocks), cut(r.downScales), D, I),
    downBias: bf16ToF32(cut(r.downBias)),
  };
}

/** What {@link cpuForward} returns. */
export interface CpuForward {
  /** [T, V] row-major. */
  readonly logits: Float32Array;
  /** [layer][t]: the experts chosen, best first. */
  readonly topk: number[][][];
}

/** Options of {@link cpuForward}. */
export interface CpuForwardOptions {
  /** Masked routing: per layer, the experts that may be chosen (the others' logits are −∞). */
  readonly allowed?: readonly (readonly number[])[];
}

/** y [T, out] = x [T, in] · Wᵀ (+ b), W [out, in]. */
function linear(x: Float64Array, w: Float32Array, inDim: number, b?: Float32Array): Float64Array {
  const T = x.length / inDim;
  const outDim = w.length / inDim;
  const y = new Float64Array(T * outDim);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outDim; o++) {
      let acc = b ? b[o]! : 0;
      for (let i = 0; i < inDim; i++) acc += x[t * inDim + i]! * w[o * inDim + i]!;
      y[t * outDim + o] = acc;
    }
  }
  return y;
}

/** torch: hidden_states * torch.rsqrt(variance + self.variance_epsilon), then weight * hidden_states. */
function rmsNorm(x: Float64Array, w: Float32Array, eps: number): Float64Array {
  const D = w.length;
  const y = new Float64Array(x.length);
  for (let t = 0; t < x.length / D; t++) {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += x[t * D + d]! ** 2;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let d = 0; d < D; d++) y[t * D + d] = w[d]! * x[t * D + d]! * inv;
  }
  return y;
}

/** gpt-oss's weights on the CPU, read once from a checkpoint. */
export class CpuGptOss {
  readonly spec: GptOssSpec;
  readonly #w: (name: string) => Float32Array;
  readonly #names: GptOssNames;
  /** [layer][expert]. */
  readonly #experts: ExpertWeights[][];
  readonly #rope: Float32Array;
  readonly #ctx: number;

  /** Reads every tensor of `names` through `bytes`, for positions below `contextLength`. */
  constructor(spec: GptOssSpec, names: GptOssNames, bytes: TensorBytes, contextLength: number) {
    this.spec = spec;
    this.#names = names;
    const cache = new Map<string, Float32Array>();
    this.#w = (n) => {
      let v = cache.get(n);
      if (!v) cache.set(n, v = bf16ToF32(bytes(n)));
      return v;
    };
    this.#experts = names.layers.map((_, l) =>
      Array.from({ length: spec.numExperts }, (_, e) => readExpert(bytes, spec, names, l, e))
    );
    this.#ctx = contextLength;
    this.#rope = spec.ropeScaling
      ? yarnRopeTable(spec.headDim, spec.ropeTheta, contextLength, spec.ropeScaling)
      : ropeTable(spec.headDim, spec.ropeTheta, contextLength);
  }

  /** Logits of every position of `ids` (one sequence from position 0), and the routers' choices. */
  forward(ids: readonly number[], options: CpuForwardOptions = {}): CpuForward {
    const s = this.spec;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = s;
    const T = ids.length;
    if (T > this.#ctx) throw new RangeError(`cpuForward: ${T} tokens, the rotary table holds ${this.#ctx}`);
    const names = this.#names;
    const w = this.#w;
    const half = hd / 2;
    const embed = w(names.embed);
    let x = new Float64Array(T * D);
    for (let t = 0; t < T; t++) for (let d = 0; d < D; d++) x[t * D + d] = embed[ids[t]! * D + d]!;
    const topk: number[][][] = [];

    for (let l = 0; l < s.numLayers; l++) {
      const n = names.layers[l]!;
      // ---- attention
      const xn = rmsNorm(x, w(n.inputNorm), s.rmsNormEps);
      const q = linear(xn, w(n.q), D, n.qBias ? w(n.qBias) : undefined); // [T, H·hd]
      const k = linear(xn, w(n.k), D, n.kBias ? w(n.kBias) : undefined); // [T, Hkv·hd]
      const v = linear(xn, w(n.v), D, n.vBias ? w(n.vBias) : undefined); // [T, Hkv·hd]
      // torch: first_ = first_half * cos - second_half * sin; second_ = second_half * cos + first_half * sin
      const rotate = (a: Float64Array, heads: number) => {
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < heads; h++) {
            const base = (t * heads + h) * hd;
            for (let i = 0; i < half; i++) {
              const c = this.#rope[t * half + i]!;
              const sn = this.#rope[this.#ctx * half + t * half + i]!;
              const a1 = a[base + i]!;
              const a2 = a[base + half + i]!;
              a[base + i] = a1 * c - a2 * sn;
              a[base + half + i] = a2 * c + a1 * sn;
            }
          }
        }
      };
      rotate(q, H);
      rotate(k, Hkv);
      const sinks = w(n.sinks);
      const window = s.layerTypes[l] === "sliding_attention" ? s.slidingWindow! : Infinity;
      const attn = new Float64Array(T * H * hd);
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < H; h++) {
          const kvh = Math.floor(h / (H / Hkv));
          // torch's sliding mask keeps keys with t − j < window
          const first = Math.max(0, t - window + 1);
          const scores: number[] = [];
          for (let j = first; j <= t; j++) {
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[(t * H + h) * hd + i]! * k[(j * Hkv + kvh) * hd + i]!;
            scores.push(dot / Math.sqrt(hd));
          }
          // torch: combined_logits = torch.cat([attn_weights, sinks], dim=-1); softmax; drop the sink
          const m = Math.max(...scores, sinks[h]!);
          const e = scores.map((sc) => Math.exp(sc - m));
          const z = e.reduce((a, b) => a + b, 0) + Math.exp(sinks[h]! - m);
          for (let i = 0; i < hd; i++) {
            let acc = 0;
            e.forEach((p, jj) => (acc += p * v[((first + jj) * Hkv + kvh) * hd + i]!));
            attn[(t * H + h) * hd + i] = acc / z;
          }
        }
      }
      const o = linear(attn, w(n.o), H * hd, n.oBias ? w(n.oBias) : undefined);
      x = x.map((xi, i) => xi + o[i]!);

      // ---- router and experts
      const xm = rmsNorm(x, w(n.postNorm), s.rmsNormEps);
      const logits = linear(xm, w(n.router), D, w(n.routerBias)); // [T, E]
      const allowed = options.allowed?.[l];
      const chosen: number[][] = [];
      for (let t = 0; t < T; t++) {
        const row = Array.from(
          { length: E },
          (_, e) => (allowed && !allowed.includes(e) ? -Infinity : logits[t * E + e]!),
        );
        // torch: router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        //        router_top_value = torch.nn.functional.softmax(router_top_value, dim=1)
        const idx = row.map((_, e) => e).sort((a, b) => row[b]! - row[a]! || a - b).slice(0, K);
        chosen.push(idx);
        const m = row[idx[0]!]!;
        const p = idx.map((e) => Math.exp(row[e]! - m));
        const z = p.reduce((a, b) => a + b, 0);
        const xt = xm.subarray(t * D, (t + 1) * D);
        idx.forEach((e, kk) => {
          const y = expertForward(xt, this.#experts[l]![e]!, { limit: s.swigluLimit, alpha: s.swigluAlpha });
          for (let d = 0; d < D; d++) x[t * D + d] = x[t * D + d]! + (p[kk]! / z) * y[d]!;
        });
      }
      topk.push(chosen);
    }
    const xf = rmsNorm(x, w(names.norm), s.rmsNormEps);
    return { logits: Float32Array.from(linear(xf, w(names.lmHead), D)), topk };
  }

  /** `steps` greedy tokens after `ids`, each by a whole forward pass (no cache: simple, slow). */
  greedy(ids: readonly number[], steps: number, options: CpuForwardOptions = {}): number[] {
    const V = this.spec.vocabSize;
    const seq = [...ids];
    const out: number[] = [];
    for (let s = 0; s < steps; s++) {
      const { logits } = this.forward(seq, options);
      const last = logits.subarray((seq.length - 1) * V, seq.length * V);
      let best = 0;
      for (let i = 1; i < V; i++) if (last[i]! > last[best]!) best = i;
      out.push(best);
      seq.push(best);
    }
    return out;
  }
}
