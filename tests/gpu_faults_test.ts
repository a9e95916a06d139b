/**
 * GPU faults become typed errors, never a crash or silent garbage: an allocation past the device's
 * limits, a device lost mid-life (destroyed from outside, as a driver reset would), a shader that does
 * not compile. After each, a new engine in the same process works.
 */
import assert from "node:assert/strict";
import {
  createEngine,
  DeviceLostError,
  type Engine,
  EngineClosedError,
  GpuError,
  OptionError,
  ShaderCompileError,
} from "../mod.ts";
import { createGpu } from "../src/gpu/device.ts";
import { PipelineCache } from "../src/gpu/pipelines.ts";
import {
  assertLogitsClose,
  assertRejects,
  copyFixture,
  drain,
  editJson,
  FIXTURES,
  mappedUnder,
  referenceLogits,
  spyOnAdapters,
} from "./support/hostile.ts";

const MODEL = `${FIXTURES}tiny-olmoe`;
const OK_WGSL = "@compute @workgroup_size(1) fn main() {}";

/** A new engine in this process loads and matches transformers. */
async function assertFreshEngineWorks(): Promise<void> {
  const { ids, logits } = referenceLogits(MODEL);
  await using engine = await createEngine({ model: MODEL });
  assertLogitsClose(await engine.forward(ids), logits, "a fresh engine");
}

Deno.test("gpu faults: a KV cache past the device's binding limit → OptionError naming contextLength", async () => {
  const probe = await createGpu();
  const limit = probe.info.maxStorageBufferBindingSize;
  probe.device.destroy();
  const dir = await copyFixture("tiny-olmoe");
  try {
    // tiny-olmoe: 4 KV heads × 16 wide × f32 = 256 bytes per position and layer
    const contextLength = Math.floor(limit / 256) + 1;
    if (contextLength > 1 << 20) {
      console.log(`skipped: this device binds ${limit} bytes, more than contextLength's range reaches`);
      return;
    }
    editJson(`${dir}/config.json`, (c) => void (c.max_position_embeddings = 1 << 20));
    using adapters = spyOnAdapters();
    await assertRejects(
      () => createEngine({ model: dir, contextLength }),
      OptionError,
      "Invalid contextLength / maxBatchTokens / maxBatchSequences: the run-state buffer kv.0.k would take",
      "maxStorageBufferBindingSize",
      `lower contextLength (${contextLength})`,
      `use contextLength <= ${contextLength - 1}`,
    );
    assert.equal(adapters.devices.length, 1);
    assert.equal((await adapters.devices[0]!.lost).reason, "destroyed", "the refused engine's device");
    assert.deepEqual(mappedUnder(dir), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await assertFreshEngineWorks();
});

Deno.test("gpu faults: a buffer past maxBufferSize → GpuError, latched by assertAlive", async () => {
  const gpu = await createGpu();
  try {
    const size = gpu.info.maxBufferSize + 4;
    gpu.assertAlive();
    // outside any error scope: latched, every later GPU call throws it
    gpu.device.createBuffer({ label: "test.unscoped", size, usage: GPUBufferUsage.STORAGE });
    await gpu.device.queue.onSubmittedWorkDone();
    await new Promise((r) => setTimeout(r, 0));
    assert.throws(() => gpu.assertAlive(), (e: unknown) => {
      assert.ok(e instanceof GpuError && !(e instanceof DeviceLostError), String(e));
      assert.match(e.message, /^GPU validation failed: .*(size|Size)/);
      return true;
    });
    assert.equal(
      await gpu.explain(new DOMException("validation error occurred", "OperationError")),
      gpu.failed,
    );
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("gpu faults: shaders that do not compile → ShaderCompileError naming the shader", async () => {
  const gpu = await createGpu();
  try {
    const cache = new PipelineCache(gpu.device);
    const broken = await assertRejects(
      () => cache.get("broken.wgsl", "main", {}, "fn main( { nonsense }"),
      ShaderCompileError,
      "Shader broken.wgsl failed to compile",
    );
    assert.match(broken.message, /1:\d+ /, "the line and column of the error");
    // cached: asking again gives the same refusal without compiling again
    await assertRejects(() => cache.get("broken.wgsl", "main"), ShaderCompileError, "Shader broken.wgsl");
    await assertRejects(
      () => cache.get("ok.wgsl", "nope", {}, OK_WGSL),
      ShaderCompileError,
      "Pipeline ok.wgsl:nope failed",
      "nope",
    );
    await assertRejects(
      () => cache.get("ok.wgsl", "main", { TILE: 8 }, OK_WGSL),
      ShaderCompileError,
      "Pipeline ok.wgsl:main failed",
      "TILE",
    );
    await assertRejects(
      () => cache.get("no_such_shader.wgsl"),
      ShaderCompileError,
      "Cannot read shader no_such_shader.wgsl",
    );
    // the cache and the device still work
    assert.ok(await cache.get("ok.wgsl", "main", {}, OK_WGSL));
    assert.ok(await cache.get("norm.wgsl", "main", { WG: 64 }));
    gpu.assertAlive();
  } finally {
    gpu.device.destroy();
  }
});

Deno.test("gpu faults: a destroyed device → DeviceLostError from the pipeline cache and the latch", async () => {
  const gpu = await createGpu();
  const cache = new PipelineCache(gpu.device);
  gpu.device.destroy();
  // at once, before the loss is reported: still the loss, not a shader's fault
  await assertRejects(() => cache.get("ok.wgsl", "main", {}, OK_WGSL), DeviceLostError, "destroyed");
  await assertRejects(() => cache.get("ok2.wgsl", "main", {}, OK_WGSL), DeviceLostError);
  assert.throws(() => gpu.assertAlive(), DeviceLostError);
  assert.ok(gpu.lost instanceof DeviceLostError);
  assert.equal(await gpu.explain(new DOMException("validation error occurred", "OperationError")), gpu.lost);
  await assertFreshEngineWorks();
});

/** Loads an engine and returns it with its device (captured as the engine asks for it). */
async function engineWithDevice(): Promise<{ engine: Engine; device: GPUDevice }> {
  using adapters = spyOnAdapters();
  const engine = await createEngine({ model: MODEL, policy: "swapmoe", budget: "90%", contextLength: 128 });
  assert.equal(adapters.devices.length, 1);
  return { engine, device: adapters.devices[0]! };
}

const LOSSES: [string, (engine: Engine, device: GPUDevice) => Promise<unknown>][] = [
  ["while idle, then forward", (e, d) => {
    d.destroy();
    return e.forward([1, 2, 3]);
  }],
  ["during forward", (e, d) => {
    const p = e.forward(Array(100).fill(3));
    d.destroy();
    return p;
  }],
  ["during generate", async (e, d) => {
    let n = 0;
    for await (const c of e.generate({ ids: [1, 2], maxTokens: 60, minTokens: 60 })) {
      n += c.ids.length;
      if (n >= 3) d.destroy();
    }
  }],
  ["while idle, then generate", (e, d) => {
    d.destroy();
    return drain(e, { ids: [1, 2], maxTokens: 4 });
  }],
];

for (const [when, lose] of LOSSES) {
  Deno.test(`gpu faults: device lost ${when} → DeviceLostError; close works; a new engine works`, async () => {
    const { engine, device } = await engineWithDevice();
    await engine.forward([1, 2, 3]);
    await assertRejects(() => lose(engine, device), DeviceLostError, "The GPU device was lost (destroyed)");
    // every later call says the same
    await assertRejects(() => engine.forward([1]), DeviceLostError);
    await assertRejects(() => drain(engine, { ids: [1], maxTokens: 2 }), DeviceLostError);
    await engine.close();
    await engine.close(); // idempotent
    await assertRejects(() => engine.forward([1]), EngineClosedError);
    await assertFreshEngineWorks();
  });
}

Deno.test("gpu faults: close destroys the device; a second engine after it works", async () => {
  using adapters = spyOnAdapters();
  const first = await createEngine({ model: MODEL });
  await first.forward([1, 2, 3]);
  await first.close();
  await assertRejects(() => first.forward([1]), EngineClosedError);
  // the closed engine's device is destroyed (its loss is reported as such)
  const reason = await adapters.devices[0]!.lost;
  assert.equal(reason.reason, "destroyed");
  await assertFreshEngineWorks();
});
