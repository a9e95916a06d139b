/** bench/synth.ts's gpt-oss and Mixtral presets: the published layout, and weights that keep the model finite. */
import assert from "node:assert/strict";
import { Checkpoint } from "../src/checkpoint/shards.ts";
import { parseCausalConfig } from "../src/models/causal/config.ts";
import { checkTensors, modelNames } from "../src/models/causal/names.ts";
import { parseGptOssConfig } from "../src/models/gpt_oss/config.ts";
import { checkGptOssTensors, gptOssNames } from "../src/models/gpt_oss/names.ts";
import { CpuGptOss, readExpert } from "../src/models/gpt_oss/reference.ts";
import { PRESETS, synthesize, tensorList } from "./synth.ts";

Deno.test("synth: gpt-oss-20b has the published tensors, 13.76 GB of them, experts in MXFP4", () => {
  const list = tensorList(PRESETS["gpt-oss-20b"]!);
  const bytes = list.reduce(
    (a, [, shape, dtype]) => a + shape.reduce((x, y) => x * y, 1) * (dtype === "U8" ? 1 : 2),
    0,
  );
  // by hand: embed + head 2 · 201088 · 2880 · 2, per layer attention 9216 · 2880 · 2 + biases 16000 + sinks 128
  // + norms 11520 + router 184384 + experts 32 · 13236480; final norm 5760
  assert.equal(bytes, 2 * 1158266880 + 24 * (53084160 + 16000 + 128 + 11520 + 184384 + 32 * 13236480) + 5760);
  const get = (n: string) => list.find((t) => t[0] === n);
  assert.deepEqual(get("model.layers.23.mlp.experts.gate_up_proj_blocks"), [
    "model.layers.23.mlp.experts.gate_up_proj_blocks",
    [32, 5760, 90, 16],
    "U8",
  ]);
  assert.deepEqual(get("model.layers.0.mlp.experts.down_proj_scales")?.[1], [32, 2880, 90]);
  assert.deepEqual(get("model.layers.0.self_attn.sinks")?.[1], [64]);
  assert.equal(get("model.layers.0.self_attn.sinks")?.[2], undefined); // bf16
});

Deno.test("synth: a shrunk gpt-oss passes the family's checks and its CPU forward is finite", async () => {
  const config = {
    ...PRESETS["gpt-oss-20b"]!,
    vocab_size: 4096, // the bundled tokenizer's
    hidden_size: 128,
    intermediate_size: 64,
    head_dim: 16,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    num_hidden_layers: 4,
    layer_types: ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    sliding_window: 4,
    num_local_experts: 8,
    max_position_embeddings: 256,
  };
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-synth-gpt-oss-" });
  try {
    await synthesize(config, dir, { seed: 3, shardBytes: 400_000 }); // a few shards
    const spec = parseGptOssConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
    const names = gptOssNames(spec);
    using ckpt = Checkpoint.open(dir);
    checkGptOssTensors(spec, names, ckpt.tensors, dir);
    // the experts' dequantized weights have an RMS near the bf16 weights' 0.02
    const w = readExpert((n) => ckpt.bytes(n), spec, names, 2, 5).gateUp;
    const rms = Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
    assert.ok(rms > 0.012 && rms < 0.04, `expert RMS ${rms}`);
    const cpu = new CpuGptOss(spec, names, (n) => ckpt.bytes(n), 16);
    const { logits } = cpu.forward([1, 17, 400, 4095, 9, 9, 9, 2000]);
    assert.ok(logits.every(Number.isFinite));
    assert.ok(logits.some((v) => v !== 0));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("synth: mixtral-quarter has Mixtral's tensors at a quarter width, 84 MiB an expert", () => {
  const list = tensorList(PRESETS["mixtral-quarter"]!);
  const get = (n: string) => list.find((t) => t[0] === n)?.[1];
  assert.deepEqual(get("model.layers.15.block_sparse_moe.experts.7.w1.weight"), [7168, 2048]);
  assert.deepEqual(get("model.layers.0.block_sparse_moe.experts.0.w2.weight"), [2048, 7168]);
  assert.deepEqual(get("model.layers.0.block_sparse_moe.gate.weight"), [8, 2048]);
  assert.deepEqual(get("model.layers.0.self_attn.k_proj.weight"), [512, 2048]); // 4 KV heads of 128
  const experts = list.filter(([n]) => n.includes(".experts."));
  assert.equal(experts.length, 16 * 8 * 3);
  const expertBytes = 3 * 7168 * 2048 * 2;
  assert.equal(expertBytes / 2 ** 20, 84);
});

Deno.test("synth: a shrunk mixtral-quarter passes the causal family's checks", async () => {
  const config = {
    ...PRESETS["mixtral-quarter"]!,
    vocab_size: 4096,
    hidden_size: 64,
    intermediate_size: 96,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
  };
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-synth-mixtral-" });
  try {
    await synthesize(config, dir, { seed: 3, shardBytes: 200_000 });
    const spec = parseCausalConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
    using ckpt = Checkpoint.open(dir);
    checkTensors(spec, modelNames(spec), ckpt.tensors, dir);
    assert.equal(spec.numExperts, 8);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
