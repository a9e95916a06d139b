/** gpt-oss's tensor names and checks against the tiny fixture, and mutated copies of it. */
import assert from "node:assert/strict";
import { Checkpoint } from "../../checkpoint/shards.ts";
import { CheckpointError } from "../../errors.ts";
import { copyFixture, editHeader, editJson, type Entry, FIXTURES } from "../../../tests/support/hostile.ts";
import { parseGptOssConfig } from "./config.ts";
import { GPT_OSS_20B_CONFIG } from "../../../tests/support/gpt_oss.ts";
import {
  bf16Shapes,
  checkGptOssTensors,
  expertRanges,
  gptOssNames,
  mxfp4Matrices,
  storedExpertBytes,
} from "./names.ts";

const FIXTURE = `${FIXTURES}tiny-gpt-oss`;
const SINGLE = "model.safetensors";
const L1 = "model.layers.1.mlp.experts";

/** Checks the checkpoint in `dir` against its own config.json. */
function check(dir: string): void {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  using ckpt = Checkpoint.open(dir);
  checkGptOssTensors(spec, gptOssNames(spec), ckpt.tensors, dir);
}

/** A copy of the fixture with `corrupt` applied; asserts the check refuses it with every part in the message. */
async function refuses(
  corrupt: (dir: string) => void,
  ...parts: string[]
): Promise<void> {
  const dir = await copyFixture("tiny-gpt-oss");
  try {
    corrupt(dir);
    assert.throws(() => check(dir), (e: unknown) => {
      assert.ok(e instanceof CheckpointError, `expected CheckpointError, got ${e}`);
      for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Edits one tensor's header entry of the copy's single file. */
const editTensor = (dir: string, name: string, edit: (e: Entry) => void) =>
  editHeader(`${dir}/${SINGLE}`, (h) => void edit(h[name] as Entry));

/** Renames a tensor (its bytes stay), so that the name the config implies is missing. */
const rename = (dir: string, name: string) =>
  editHeader(`${dir}/${SINGLE}`, (h) => {
    h[`${name}.renamed`] = h[name];
    delete h[name];
  });

Deno.test("gpt-oss names: the fixture's tensors are exactly those the config implies", () => {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${FIXTURE}/config.json`)));
  const names = gptOssNames(spec);
  using ckpt = Checkpoint.open(FIXTURE);
  checkGptOssTensors(spec, names, ckpt.tensors, FIXTURE);
  const expected = new Set([
    ...bf16Shapes(spec, names).keys(),
    ...mxfp4Matrices(spec, names).flatMap((m) => [m.blocks, m.scales]),
  ]);
  assert.deepEqual([...ckpt.tensors.keys()].sort(), [...expected].sort());
  assert.equal(names.layers[0]!.sinks, "model.layers.0.self_attn.sinks");
  assert.equal(names.layers[1]!.experts.gateUp.blocks, `${L1}.gate_up_proj_blocks`);
  assert.equal(names.layers[1]!.oBias, "model.layers.1.self_attn.o_proj.bias");
});

Deno.test("gpt-oss names: tied heads read the embedding; no attention_bias, no biases", () => {
  const tied = parseGptOssConfig({ ...GPT_OSS_20B_CONFIG, tie_word_embeddings: true, attention_bias: false });
  const names = gptOssNames(tied);
  assert.equal(names.lmHead, "model.embed_tokens.weight");
  assert.equal(names.layers[0]!.qBias, undefined);
  assert.ok(![...bf16Shapes(tied, names).keys()].some((n) => n.endsWith("proj.bias")));
});

Deno.test("gpt-oss names: an expert's byte ranges tile each fused tensor", () => {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${FIXTURE}/config.json`)));
  const names = gptOssNames(spec);
  using ckpt = Checkpoint.open(FIXTURE);
  for (let layer = 0; layer < spec.numLayers; layer++) {
    const covered = new Map<string, number>();
    let perExpert = 0;
    for (let e = 0; e < spec.numExperts; e++) {
      const r = expertRanges(spec, names, layer, e);
      perExpert = 0;
      for (const part of Object.values(r)) {
        assert.equal(part.byteOffset, covered.get(part.tensor) ?? 0, `${part.tensor} expert ${e}`);
        covered.set(part.tensor, part.byteOffset + part.byteLength);
        perExpert += part.byteLength;
      }
    }
    for (const [tensor, end] of covered) assert.equal(end, ckpt.tensors.get(tensor)!.byteLength, tensor);
    assert.equal(perExpert, storedExpertBytes(spec));
  }
  assert.throws(() => expertRanges(spec, names, 0, 8), RangeError);
  assert.throws(() => expertRanges(spec, names, 2, 0), RangeError);
  // gpt-oss-20b: 5760·1440 + 5760·90 + 11520 + 2880·1440 + 2880·90 + 5760 bytes per expert
  const big = parseGptOssConfig(GPT_OSS_20B_CONFIG);
  const r = expertRanges(big, gptOssNames(big), 23, 31);
  assert.deepEqual(r.gateUpBlocks, {
    tensor: "model.layers.23.mlp.experts.gate_up_proj_blocks",
    byteOffset: 31 * 8294400,
    byteLength: 8294400,
  });
  assert.equal(r.downScales.byteLength, 259200);
  assert.equal(storedExpertBytes(big), 13236480);
});

Deno.test("gpt-oss names: MXFP4 blocks and scales whose shapes disagree are refused, naming both", async () => {
  await refuses(
    (d) => editTensor(d, `${L1}.gate_up_proj_scales`, (e) => (e.shape = [8, 64, 4])),
    "MXFP4 blocks and scales disagree",
    `"${L1}.gate_up_proj_blocks" is [8,128,2,16]`,
    `"${L1}.gate_up_proj_scales" is [8,64,4]`,
  );
  await refuses(
    (d) => editTensor(d, `${L1}.down_proj_blocks`, (e) => (e.shape = [8, 64, 1, 32])),
    "MXFP4 blocks and scales disagree",
    `"${L1}.down_proj_blocks" is [8,64,1,32]`,
  );
});

Deno.test("gpt-oss names: consistent blocks and scales of another shape than the config's are refused", async () => {
  await refuses(
    (d) => {
      editTensor(d, `${L1}.down_proj_blocks`, (e) => (e.shape = [8, 32, 4, 16]));
      editTensor(d, `${L1}.down_proj_scales`, (e) => (e.shape = [8, 32, 4]));
    },
    "Tensor shape disagrees with config.json",
    `"${L1}.down_proj_blocks" is [8,32,4,16], expected [8,64,2,16]`,
  );
  // the config says more experts than the checkpoint holds
  await refuses(
    (d) => editJson(`${d}/config.json`, (c) => void (c.intermediate_size = 32)),
    "Tensor shape disagrees with config.json",
    "gate_up_proj_blocks",
    "expected [8,64,2,16]",
  );
});

Deno.test("gpt-oss names: a missing scales or blocks tensor is refused by name", async () => {
  await refuses(
    (d) => rename(d, `${L1}.down_proj_scales`),
    `Missing tensor for gpt_oss: "${L1}.down_proj_scales", the MXFP4 scales of "${L1}.down_proj_blocks"`,
    "[8,64,2]",
  );
  await refuses(
    (d) => rename(d, "model.layers.0.mlp.experts.gate_up_proj_blocks"),
    'Missing tensor for gpt_oss: "model.layers.0.mlp.experts.gate_up_proj_blocks"',
    "[8,128,2,16] U8",
  );
});

Deno.test("gpt-oss names: dequantized (bf16) experts are refused with the reason", async () => {
  await refuses(
    (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        // the same bytes as a bf16 tensor of transformers' dequantized layout's size
        h[`${L1}.gate_up_proj`] = {
          ...(h[`${L1}.gate_up_proj_blocks`] as Entry),
          dtype: "BF16",
          shape: [8, 64, 32],
        };
        delete h[`${L1}.gate_up_proj_blocks`];
      }),
    `Missing tensor for gpt_oss: "${L1}.gate_up_proj_blocks"`,
    `found "${L1}.gate_up_proj" (BF16 [8,64,32]) instead`,
    "only MXFP4 as published",
  );
});

Deno.test("gpt-oss names: blocks or scales of another dtype are refused", async () => {
  await refuses(
    (d) => editTensor(d, `${L1}.gate_up_proj_scales`, (e) => (e.dtype = "I8")),
    `Unsupported dtype: "${L1}.gate_up_proj_scales" is I8, MXFP4 scales are U8`,
  );
  await refuses(
    (d) => editTensor(d, `${L1}.down_proj_blocks`, (e) => (e.dtype = "I8")),
    "MXFP4 blocks are U8",
  );
});

Deno.test("gpt-oss names: bf16 tensors are checked as every family's (sinks, biases, router)", async () => {
  await refuses(
    (d) => rename(d, "model.layers.0.self_attn.sinks"),
    'Missing tensor for gpt_oss: "model.layers.0.self_attn.sinks"',
    "[4]",
  );
  await refuses(
    (d) => rename(d, "model.layers.1.mlp.router.bias"),
    'Missing tensor for gpt_oss: "model.layers.1.mlp.router.bias"',
  );
  await refuses(
    (d) => editTensor(d, `${L1}.gate_up_proj_bias`, (e) => (e.shape = [128, 8])),
    `"${L1}.gate_up_proj_bias" is [128,8], expected [8,128]`,
  );
  await refuses(
    (d) => editTensor(d, "model.layers.0.self_attn.o_proj.bias", (e) => (e.dtype = "F16")),
    "Unsupported dtype",
    "o_proj.bias",
  );
});
