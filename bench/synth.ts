/**
 * Writes a real-shaped MoE checkpoint with seeded random bf16 weights in the published layout
 * (config.json, sharded safetensors with model.safetensors.index.json, the bundled tokenizer), for
 * speed measurements where the real weights are too large to carry.
 *
 *   deno run -A bench/synth.ts --preset olmoe-1b-7b --out /tmp/olmoe [--seed 1] [--shard-gib 4]
 *
 * Presets: `olmoe-1b-7b` (allenai/OLMoE-1B-7B-0924 shapes: 64 experts, top-8, 16 layers, d 2048,
 * ~14 GB), `qwen1.5-moe-a2.7b` (Qwen/Qwen1.5-MoE-A2.7B: 60 experts, top-4, shared expert, 24 layers,
 * ~29 GB), `mixtral-quarter` (Mixtral-8x7B's layout at a quarter of its width: 16 layers, d 2048, 8
 * experts 7168 wide of 84 MiB, top-2, 4 KV heads, vocab 32000, ~11 GiB), `gpt-oss-20b` (openai/gpt-oss-20b's config.json and tensors: 24 layers alternating sliding
 * and full attention, 32 experts, top-4, YaRN, experts in MXFP4 as published, 13.8 GB), `small` (a few
 * MB, for tests). Weights are N(0, 0.02²) from a seeded pool of random bf16 values, each tensor read
 * from the pool at a seeded offset; norms are 1. MXFP4 experts have uniformly random e2m1 codes and
 * scales of 2⁻⁸ or 2⁻⁷ (an RMS of 0.018), so the clamped SwiGLU stays in range and logits finite.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { parseCausalConfig } from "../src/models/causal/config.ts";
import { expectedShapes, modelNames } from "../src/models/causal/names.ts";
import { parseSwitchConfig } from "../src/models/switch/config.ts";
import { switchTensorShapes } from "../src/models/switch/names.ts";
import { parseGptOssConfig } from "../src/models/gpt_oss/config.ts";
import {
  bf16Shapes,
  gptOssNames,
  MXFP4_BLOCK,
  MXFP4_BLOCK_BYTES,
  mxfp4Matrices,
} from "../src/models/gpt_oss/names.ts";
import { GPT_OSS_20B_CONFIG } from "../tests/support/gpt_oss.ts";

/** A preset's `config.json`. */
export const PRESETS: Record<string, Record<string, unknown>> = {
  "olmoe-1b-7b": {
    model_type: "olmoe",
    architectures: ["OlmoeForCausalLM"],
    vocab_size: 50304,
    hidden_size: 2048,
    intermediate_size: 1024,
    num_hidden_layers: 16,
    num_attention_heads: 16,
    num_key_value_heads: 16,
    num_experts: 64,
    num_experts_per_tok: 8,
    norm_topk_prob: false,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    clip_qkv: null,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  "qwen1.5-moe-a2.7b": {
    model_type: "qwen2_moe",
    architectures: ["Qwen2MoeForCausalLM"],
    vocab_size: 151936,
    hidden_size: 2048,
    intermediate_size: 5632,
    moe_intermediate_size: 1408,
    shared_expert_intermediate_size: 5632,
    num_hidden_layers: 24,
    num_attention_heads: 16,
    num_key_value_heads: 16,
    num_experts: 60,
    num_experts_per_tok: 4,
    norm_topk_prob: false,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  "switch-base-8": {
    model_type: "switch_transformers",
    architectures: ["SwitchTransformersForConditionalGeneration"],
    vocab_size: 32128,
    d_model: 768,
    d_kv: 64,
    d_ff: 3072,
    num_layers: 12,
    num_decoder_layers: 12,
    num_heads: 12,
    num_experts: 8,
    expert_capacity: 64,
    encoder_sparse_step: 2,
    decoder_sparse_step: 2,
    num_sparse_encoder_layers: 6,
    num_sparse_decoder_layers: 6,
    router_dtype: "float32",
    router_jitter_noise: 0.0,
    relative_attention_num_buckets: 32,
    relative_attention_max_distance: 128,
    layer_norm_epsilon: 1e-6,
    feed_forward_proj: "relu",
    is_encoder_decoder: true,
    tie_word_embeddings: false,
    pad_token_id: 0,
    eos_token_id: 1,
    decoder_start_token_id: 0,
  },
  "mixtral-quarter": {
    model_type: "mixtral",
    architectures: ["MixtralForCausalLM"],
    vocab_size: 32000,
    hidden_size: 2048,
    intermediate_size: 7168,
    num_hidden_layers: 16,
    num_attention_heads: 16,
    num_key_value_heads: 4,
    num_local_experts: 8,
    num_experts_per_tok: 2,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 1000000,
    sliding_window: null,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
  "gpt-oss-20b": { ...GPT_OSS_20B_CONFIG },
  small: {
    model_type: "olmoe",
    architectures: ["OlmoeForCausalLM"],
    vocab_size: 4096,
    hidden_size: 128,
    intermediate_size: 64,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    num_experts: 8,
    num_experts_per_tok: 2,
    norm_topk_prob: false,
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  },
};

type Shape = number[];
/** A tensor to write: name, shape, and dtype (bf16 unless given). */
type TensorSpec = [name: string, shape: Shape, dtype?: "BF16" | "U8"];

/** gpt-oss's tensors, layer by layer: the bf16 ones, and the experts' MXFP4 blocks and scales (u8). */
function gptOssTensorList(c: Record<string, unknown>): TensorSpec[] {
  const spec = parseGptOssConfig(c);
  const names = gptOssNames(spec);
  const E = spec.numExperts;
  const mx: TensorSpec[] = mxfp4Matrices(spec, names).flatMap((m): TensorSpec[] => [
    [m.blocks, [E, m.rows, m.cols / MXFP4_BLOCK, MXFP4_BLOCK_BYTES], "U8"],
    [m.scales, [E, m.rows, m.cols / MXFP4_BLOCK], "U8"],
  ]);
  const all: TensorSpec[] = [...bf16Shapes(spec, names)].map(([n, s]) => [n, s]);
  all.push(...mx);
  return byLayer(all);
}

/** A causal config's spec and tensor names. */
function causal(c: Record<string, unknown>): Parameters<typeof expectedShapes> {
  const spec = parseCausalConfig(c);
  return [spec, modelNames(spec)];
}

/** Tensors in layer order (those of no layer first), by name within a layer. */
function byLayer(all: TensorSpec[]): TensorSpec[] {
  const layer = (n: string) => Number(/^model\.layers\.(\d+)\./.exec(n)?.[1] ?? -1);
  return all.sort((a, b) => layer(a[0]) - layer(b[0]) || (a[0] < b[0] ? -1 : 1));
}

/** Tensor names and shapes of a config, in published layout and order. */
export function tensorList(c: Record<string, unknown>): TensorSpec[] {
  if (c.model_type === "switch_transformers") return [...switchTensorShapes(parseSwitchConfig(c))];
  if (c.model_type === "gpt_oss") return gptOssTensorList(c);
  if (c.model_type === "mixtral") return byLayer([...expectedShapes(...causal(c))].map(([n, s]) => [n, s]));
  const n = (k: string) => c[k] as number;
  const D = n("hidden_size"),
    L = n("num_hidden_layers"),
    H = n("num_attention_heads"),
    Hkv = n("num_key_value_heads");
  const hd = D / H, E = n("num_experts"), V = n("vocab_size");
  const qwen = c.model_type === "qwen2_moe";
  const I = qwen ? n("moe_intermediate_size") : n("intermediate_size");
  const out: TensorSpec[] = [["model.embed_tokens.weight", [V, D]]];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    out.push([`${p}.input_layernorm.weight`, [D]], [`${p}.post_attention_layernorm.weight`, [D]]);
    out.push([`${p}.self_attn.q_proj.weight`, [H * hd, D]], [`${p}.self_attn.k_proj.weight`, [Hkv * hd, D]]);
    out.push([`${p}.self_attn.v_proj.weight`, [Hkv * hd, D]], [`${p}.self_attn.o_proj.weight`, [D, H * hd]]);
    if (qwen) {
      out.push([`${p}.self_attn.q_proj.bias`, [H * hd]], [`${p}.self_attn.k_proj.bias`, [Hkv * hd]]);
      out.push([`${p}.self_attn.v_proj.bias`, [Hkv * hd]]);
    } else {
      out.push([`${p}.self_attn.q_norm.weight`, [H * hd]], [`${p}.self_attn.k_norm.weight`, [Hkv * hd]]);
    }
    out.push([`${p}.mlp.gate.weight`, [E, D]]);
    for (let e = 0; e < E; e++) {
      out.push([`${p}.mlp.experts.${e}.gate_proj.weight`, [I, D]], [`${p}.mlp.experts.${e}.up_proj.weight`, [
        I,
        D,
      ]]);
      out.push([`${p}.mlp.experts.${e}.down_proj.weight`, [D, I]]);
    }
    if (qwen) {
      const S = n("shared_expert_intermediate_size");
      out.push([`${p}.mlp.shared_expert.gate_proj.weight`, [S, D]], [
        `${p}.mlp.shared_expert.up_proj.weight`,
        [S, D],
      ]);
      out.push([`${p}.mlp.shared_expert.down_proj.weight`, [D, S]], [`${p}.mlp.shared_expert_gate.weight`, [
        1,
        D,
      ]]);
    }
  }
  out.push(["model.norm.weight", [D]], ["lm_head.weight", [V, D]]);
  return out;
}

function xorshift(seed: number): () => number {
  let s = (seed >>> 0) || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** A pool of bf16 values ~ N(0, std²) (Irwin–Hall approximation), as u16 bits. */
function randomPool(n: number, seed: number, std: number): Uint16Array {
  const rand = xorshift(seed);
  const out = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < n; i++) {
    f[0] = (rand() + rand() + rand() + rand() - 2) * Math.sqrt(3) * std;
    out[i] = (u[0]! + 0x8000) >>> 16; // round to nearest
  }
  return out;
}

/** `n` uniformly random bytes (MXFP4 blocks: two random e2m1 codes each). */
function randomBytes(n: number, seed: number): Uint8Array {
  const rand = xorshift(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** `n` e8m0 scales 119 or 120 (2⁻⁸ or 2⁻⁷): random e2m1 codes (RMS 2.93) times them have an RMS of 0.018. */
function scaleBytes(n: number, seed: number): Uint8Array {
  const rand = xorshift(seed);
  return Uint8Array.from({ length: n }, () => 119 + Math.floor(rand() * 2));
}

/** Bytes of `count` elements of `dtype`. */
const sizeOf = (shape: Shape, dtype: TensorSpec[2]) =>
  shape.reduce((a, b) => a * b, 1) * (dtype === "U8" ? 1 : 2);

/** Writes the checkpoint for `config` into `out`. Returns bytes written. */
export async function synthesize(
  config: Record<string, unknown>,
  out: string,
  options: { seed?: number; shardBytes?: number; tokenizerDir?: string; log?: (s: string) => void } = {},
): Promise<number> {
  const seed = options.seed ?? 1;
  const shardBytes = options.shardBytes ?? 4 * 2 ** 30;
  await Deno.mkdir(out, { recursive: true });
  const rand = xorshift(seed * 7919 + 1);
  const tensors = tensorList(config);
  // where each tensor's bytes come from, read at a seeded offset and wrapped around
  const bf16 = new Uint8Array(randomPool(1 << 24, seed, 0.02).buffer); // 32 MiB of random bf16
  const mxfp4 = tensors.some((t) => t[2] === "U8");
  const codes = mxfp4 ? randomBytes(1 << 24, seed * 31 + 7) : new Uint8Array(0);
  const scales = mxfp4 ? scaleBytes(1 << 20, seed * 131 + 3) : new Uint8Array(0);
  const ones = new Uint8Array([0x80, 0x3f]); // bf16 1.0, little-endian
  // shard plan
  const shards: TensorSpec[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const bytes = sizeOf(t[1], t[2]);
    if (size > 0 && size + bytes > shardBytes) {
      shards.push([]);
      size = 0;
    }
    shards.at(-1)!.push(t);
    size += bytes;
  }
  const weightMap: Record<string, string> = {};
  let total = 0;
  const chunk = new Uint8Array(1 << 23);
  for (const [i, list] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${
      String(shards.length).padStart(5, "0")
    }.safetensors`;
    const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
    let off = 0;
    for (const [name, shape, dtype] of list) {
      const bytes = sizeOf(shape, dtype);
      header[name] = { dtype: dtype ?? "BF16", shape, data_offsets: [off, off + bytes] };
      off += bytes;
      weightMap[name] = file;
    }
    let json = JSON.stringify(header);
    json += " ".repeat((8 - (json.length % 8)) % 8);
    using f = await Deno.open(join(out, file), { write: true, create: true, truncate: true });
    const head = new Uint8Array(8 + json.length);
    new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
    head.set(new TextEncoder().encode(json), 8);
    await f.write(head);
    for (const [name, shape, dtype] of list) {
      const n = sizeOf(shape, dtype);
      const isNorm = shape.length === 1 && /norm|layer_norm/.test(name);
      const source = isNorm ? ones : dtype !== "U8" ? bf16 : name.endsWith("_scales") ? scales : codes;
      // one draw per tensor, norms included, so that a seed writes the same bf16 weights as it always did
      const r = rand();
      let start = isNorm ? 0 : Math.floor(r * (source.length / 2 - 1)) * 2; // even: whole bf16 values
      for (let done = 0; done < n;) {
        const m = Math.min(chunk.length, n - done);
        for (let k = 0; k < m;) {
          const take = Math.min(m - k, source.length - start);
          chunk.set(source.subarray(start, start + take), k);
          k += take;
          start = (start + take) % source.length;
        }
        const view = chunk.subarray(0, m);
        for (let w = 0; w < view.length;) w += await f.write(view.subarray(w));
        done += m;
      }
    }
    total += off;
    options.log?.(`${file}: ${(off / 2 ** 30).toFixed(2)} GiB`);
  }
  await Deno.writeTextFile(
    join(out, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 1),
  );
  await Deno.writeTextFile(
    join(out, "config.json"),
    JSON.stringify({ ...config, torch_dtype: "bfloat16" }, null, 1),
  );
  const tok = options.tokenizerDir ?? new URL("../models/sotu-moe-mini/", import.meta.url).pathname;
  for (const f of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]) {
    await Deno.copyFile(join(tok, f), join(out, f));
  }
  return total;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      preset: { type: "string", default: "olmoe-1b-7b" },
      out: { type: "string" },
      seed: { type: "string", default: "1" },
      "shard-gib": { type: "string", default: "4" },
    },
  });
  const config = PRESETS[values.preset!];
  if (!config || !values.out) {
    console.error(
      `usage: synth.ts --preset ${Object.keys(PRESETS).join("|")} --out DIR [--seed N] [--shard-gib N]`,
    );
    Deno.exit(2);
  }
  const t = performance.now();
  const bytes = await synthesize(config, values.out, {
    seed: Number(values.seed),
    shardBytes: Number(values["shard-gib"]) * 2 ** 30,
    log: (s) => console.log(s),
  });
  console.log(
    `wrote ${(bytes / 2 ** 30).toFixed(2)} GiB in ${
      ((performance.now() - t) / 1000).toFixed(1)
    } s to ${values.out}`,
  );
}
