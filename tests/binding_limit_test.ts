/**
 * Expert slots against what the GPU binds: each MoE layer keeps one buffer per expert matrix, and a
 * kernel binds it whole, so it cannot exceed the device's `maxStorageBufferBindingSize` (128 MiB on
 * Mesa's lavapipe). A checkpoint whose layer of 9 experts takes 144 MiB per matrix is refused under
 * `full` with a BudgetError naming the budget that fits (8 of 9), and loads under that budget.
 *
 * A dense weight larger than that (here an embedding of 70,000 × 1024 bf16, 136.7 MiB) cannot be
 * split across buffers: the model cannot run on that GPU, and says so naming the tensor.
 *
 * The checkpoint is tiny-mixtral's config widened (hidden 1024, experts 8192 wide: 16 MiB per expert
 * matrix) over a sparse safetensors file: its 451 MiB of zeros take no disk, and the refusal comes
 * before any expert is read.
 */
import assert from "node:assert/strict";
import { BudgetError, createEngine, GpuError } from "../mod.ts";
import { parseCausalConfig } from "../src/models/causal/config.ts";
import { expectedShapes, modelNames } from "../src/models/causal/names.ts";

const FIXTURE = new URL("./fixtures/tiny-mixtral/", import.meta.url);
const EXPERT_MATRIX = 8192 * 1024 * 2; // 16 MiB

const adapter = await navigator.gpu.requestAdapter();
const limit = adapter?.limits.maxStorageBufferBindingSize ?? Infinity;

/** A folder with the widened config, tiny-mixtral's tokenizer and a sparse all-zero checkpoint. */
async function wideCheckpoint(edit: Record<string, number> = {}): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-wide-" });
  const config = JSON.parse(await Deno.readTextFile(new URL("config.json", FIXTURE)));
  Object.assign(config, {
    hidden_size: 1024,
    intermediate_size: 8192,
    num_local_experts: 9,
    num_hidden_layers: 1,
    num_attention_heads: 8,
    num_key_value_heads: 2,
  }, edit);
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
    await Deno.copyFile(new URL(f, FIXTURE), `${dir}/${f}`);
  }
  const spec = parseCausalConfig(config);
  const header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> = {};
  let at = 0;
  for (const [name, shape] of expectedShapes(spec, modelNames(spec))) {
    const bytes = shape.reduce((a, b) => a * b, 2);
    header[name] = { dtype: "BF16", shape, data_offsets: [at, at + bytes] };
    at += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  const path = `${dir}/model.safetensors`;
  await Deno.writeFile(path, new Uint8Array([...prefix, ...new TextEncoder().encode(json)]));
  await Deno.truncate(path, 8 + json.length + at); // the tensors: a hole of zeros
  return dir;
}

Deno.test({
  name:
    "binding limit: a layer of experts larger than the GPU binds is refused with the budget that fits, which loads",
  ignore: !(9 * EXPERT_MATRIX > limit && 8 * EXPERT_MATRIX <= limit),
  async fn() {
    const dir = await wideCheckpoint();
    try {
      await assert.rejects(
        () => createEngine({ model: dir, policy: "full", contextLength: 64 }),
        (e: Error) => {
          assert.ok(e instanceof BudgetError, `${e.name}: ${e.message}`);
          assert.match(
            e.message,
            /layer 0's 9 copies of gate would take 144\.0 MiB in one buffer, above the 128\.0 MiB/,
          );
          assert.match(e.message, /at most 8 of 9 experts a layer at bf16: .* such as "8\/9"/);
          return true;
        },
      );
      await using engine = await createEngine({ model: dir, budget: "8/9", contextLength: 64 });
      assert.deepEqual(engine.stats().expertSlots, [8]);
      // raising the budget past the limit is refused the same way, and the engine stays as it was
      await assert.rejects(() => engine.setBudget("100%"), BudgetError);
      assert.deepEqual(engine.stats().expertSlots, [8]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "binding limit: a dense weight larger than the GPU binds is a GpuError naming it, before any upload",
  ignore: !(70_000 * 1024 * 2 > limit),
  async fn() {
    const dir = await wideCheckpoint({ vocab_size: 70_000, intermediate_size: 128 });
    try {
      await assert.rejects(
        () => createEngine({ model: dir, policy: "full", contextLength: 64, maxBatchTokens: 16 }),
        (e: Error) => {
          assert.ok(e instanceof GpuError, `${e.name}: ${e.message}`);
          assert.match(
            e.message,
            /This GPU cannot hold the model's model\.embed_tokens\.weight: it takes 136\.7 MiB/,
          );
          return true;
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
