/**
 * `shaders/sample.wgsl`: greedy or temperature/top-k/top-p sampling of each logits row on the GPU,
 * with the settings of the row's sequence, writing the token into that sequence's generated tokens
 * (where its next step's embedding reads it), or {@link NON_FINITE_TOKEN} for a row that is not all
 * finite.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout } from "../gpu/dispatch.ts";

/** Sampling settings of one request. temperature 0 is greedy; topK 0 and topP 1 are off. */
export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  /** End-of-sequence ids cannot be sampled before this many tokens (transformers' `min_new_tokens`). */
  minTokens: number;
  /** End-of-sequence ids (at most 4). */
  eos: readonly number[];
}

const PARAMS = paramsLayout(
  "sample.wgsl",
  [
    "vocab",
    "top_k",
    "f:top_p",
    "f:temperature",
    "seed",
    "min_tokens",
    "n_eos",
    "_p0",
    "eos0",
    "eos1",
    "eos2",
    "eos3",
  ] as const,
);

/**
 * What the sampler writes instead of a token when the logits row holds a NaN or an infinity (the
 * shader's `NON_FINITE`): never a vocabulary id.
 */
export const NON_FINITE_TOKEN = 0xffff_ffff;

/** Bytes of the sampler's `Params`: one slot's settings (the buffer holds one per slot). */
export const SAMPLING_PARAMS_BYTES = 48;

/** Packs {@link SamplingParams} as the shader's `Params`. */
export function packSampling(vocab: number, s: SamplingParams): ArrayBuffer {
  if (s.eos.length > 4) throw new RangeError(`At most 4 end-of-sequence ids, got ${s.eos.length}`);
  const [eos0 = 0, eos1 = 0, eos2 = 0, eos3 = 0] = s.eos;
  return PARAMS.pack({
    vocab,
    top_k: s.topK,
    top_p: s.topP,
    temperature: s.temperature,
    seed: s.seed,
    min_tokens: s.minTokens,
    n_eos: s.eos.length,
    eos0,
    eos1,
    eos2,
    eos3,
  });
}

/**
 * Records the sampler: a workgroup per logits row. `params` holds {@link SAMPLING_PARAMS_BYTES} bytes
 * per slot, which the caller writes when a sequence takes the slot (see {@link packSampling}); logits:
 * [headRows, V]; rows: the call's `Row` table; generated: [slots, maxGenerated] u32.
 */
export async function sampler(
  ctx: KernelContext,
  o: {
    label: string;
    params: GPUBuffer;
    logits: GPUBuffer;
    rows: GPUBuffer;
    generated: GPUBuffer;
    maxGenerated: number;
  },
): Promise<Dispatch> {
  const pipeline = await ctx.pipelines.get("sample.wgsl", "main", {
    NON_FINITE: NON_FINITE_TOKEN,
    MAX_GEN: o.maxGenerated,
  });
  const bindGroup = ctx.device.createBindGroup({
    label: o.label,
    layout: pipeline.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: ctx.step } },
      { binding: 1, resource: { buffer: o.params } },
      { binding: 2, resource: { buffer: o.logits } },
      { binding: 3, resource: { buffer: o.rows } },
      { binding: 4, resource: { buffer: o.generated } },
    ],
  });
  return { label: o.label, pipeline, bindGroup, workgroups: (s) => s.headRows };
}
