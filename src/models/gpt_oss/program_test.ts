/**
 * The gpt-oss program on a real WebGPU device (lavapipe in CI) against the CPU reference (reference.ts,
 * which matches transformers on the fixture: reference_test.ts): embedding, norms, q/k/v and o with
 * biases, YaRN, sinks, sliding and full layers across prefill chunks and decode steps, the router with
 * its bias, full and masked, the routed experts read in MXFP4 from their slots with their clamped
 * SwiGLU and biases, and the head. The fixture's biases are zero and its norms one, so the same runs on
 * a copy with random biases, norm weights and sinks.
 */
import assert from "node:assert/strict";
import { Checkpoint } from "../../checkpoint/shards.ts";
import { type CallShape, encode } from "../../gpu/dispatch.ts";
import { chunkRows, packRows, packStep } from "../../kernels/step.ts";
import { type GpuModel, loadGpuModel } from "../../runtime/gpu_model.ts";
import { planModel } from "../../runtime/model_plan.ts";
import {
  assertLogitsClose,
  copyFixture,
  encodeSafetensors,
  type Entry,
  FIXTURES,
  readSafetensors,
} from "../../../tests/support/hostile.ts";
import { passDispatches } from "../family.ts";
import { type GptOssSpec, parseGptOssConfig } from "./config.ts";
import { gptOssNames } from "./names.ts";
import { CpuGptOss } from "./reference.ts";

const FIXTURE = `${FIXTURES}tiny-gpt-oss`;
// 16 rows per pass: the 27-token prompt takes two chunks, the second starting past the window (6)
const SHAPE = { maxBatchTokens: 16, contextLength: 64 };

interface Reference {
  masked_routing: { allowed: number[][] };
  prompts: { ids: number[] }[];
}

/**
 * The checkpoint in `dir` planned as the engine plans it and loaded on the GPU with its experts: every
 * one (full), or the `allowed` ones (static, masked routing).
 */
async function load(dir: string, allowed?: number[][]): Promise<GpuModel> {
  const planned = await planModel(
    allowed ? { model: dir, ...SHAPE, policy: "static", residentExperts: allowed } : { model: dir, ...SHAPE },
  );
  try {
    const budget = planned.plan.resolve(undefined);
    const m = await loadGpuModel(planned, {
      budget,
      slots: planned.plan.slots(budget),
      masked: allowed !== undefined,
      options: {},
    });
    const E = planned.arch.spec.numExperts;
    for (let l = 0; l < planned.arch.moeLayers; l++) {
      for (const e of allowed?.[l] ?? Array.from({ length: E }, (_, i) => i)) m.cache.load(l, e, 0);
    }
    m.cache.flush();
    return m;
  } finally {
    planned.ckpt.close();
  }
}

/** Runs the decoder pass over `ids` at `pos0` (one chunk) and reads back its logits rows and the last layer's choices. */
async function run(m: GpuModel, spec: GptOssSpec, ids: number[], pos0: number) {
  const device = m.gpu.device;
  const io = m.program.io;
  const shape: CallShape = { t: ids.length, headRows: ids.length, pos0 };
  device.queue.writeBuffer(io.ids, 0, new Uint32Array(ids));
  device.queue.writeBuffer(m.step, 0, packStep(shape));
  device.queue.writeBuffer(io.rows, 0, packRows(chunkRows(0, pos0, ids.length)));
  m.cache.flush();
  const V = spec.vocabSize;
  const bytes = ids.length * V * 4;
  const kBytes = ids.length * spec.topK * 4;
  const read = device.createBuffer({
    size: bytes + kBytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encode(pass, passDispatches(m.program.decoder), shape);
  pass.end();
  enc.copyBufferToBuffer(io.logits, 0, read, 0, bytes);
  enc.copyBufferToBuffer(io.topkIds, 0, read, bytes, kBytes);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const logits = new Float32Array(read.getMappedRange(0, bytes).slice(0));
  const topk = new Uint32Array(read.getMappedRange(bytes, kBytes).slice(0));
  read.unmap();
  read.destroy();
  return { logits, topk };
}

/**
 * A copy of the fixture whose biases, norms and sinks (all zero or one in it) hold random bf16 values,
 * so that a bias, norm weight or sink read from the wrong place shows.
 */
async function withRandomBiases(): Promise<string> {
  const dir = await copyFixture("tiny-gpt-oss");
  const path = `${dir}/model.safetensors`;
  const { header, data } = readSafetensors(path);
  let s = 12345;
  const rand = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__" || !/(bias|norm\.weight|layernorm\.weight|sinks)$/.test(name)) continue;
    const [begin, end] = (e as Entry).data_offsets;
    for (let o = begin; o < end; o += 2) {
      f[0] = name.endsWith("weight") ? 1 + 0.4 * rand() : name.endsWith("sinks") ? 2 * rand() : 0.2 * rand();
      data[o] = (u[0]! >>> 16) & 0xff;
      data[o + 1] = u[0]! >>> 24;
    }
  }
  await Deno.writeFile(path, encodeSafetensors(header, data));
  return dir;
}

/** Rows `from` … of a [T, V] logits array. */
const rows = (l: Float32Array, V: number, from: number, to: number) => l.slice(from * V, to * V);

/** The last layer's choices of rows `from` … `to` − 1, flattened. */
const choices = (topk: number[][][], from: number, to: number) => topk.at(-1)!.slice(from, to).flat();

/** The whole model on the GPU against the CPU reference, full and masked. */
async function compare(dir: string): Promise<void> {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const ref: Reference = JSON.parse(Deno.readTextFileSync(`${dir}/reference.json`));
  using ckpt = Checkpoint.open(dir);
  const cpu = new CpuGptOss(spec, gptOssNames(spec), (n) => ckpt.bytes(n), SHAPE.contextLength);
  const V = spec.vocabSize;
  for (const masked of [false, true]) {
    const allowed = masked ? ref.masked_routing.allowed : undefined;
    const m = await load(dir, allowed);
    try {
      const prompt = ref.prompts[1]!.ids; // 27 tokens
      const extra = [7, 300, 42];
      const want = cpu.forward([...prompt, ...extra], { allowed });
      const what = masked ? "masked" : "full";
      for (let start = 0; start < prompt.length; start += SHAPE.maxBatchTokens) {
        const end = Math.min(prompt.length, start + SHAPE.maxBatchTokens);
        const got = await run(m, spec, prompt.slice(start, end), start);
        assertLogitsClose(
          got.logits,
          rows(want.logits, V, start, end),
          `${what} prefill rows ${start}…${end}`,
        );
        assert.deepEqual(
          [...got.topk],
          choices(want.topk, start, end),
          `${what} routing rows ${start}…${end}`,
        );
      }
      for (const [i, id] of extra.entries()) {
        const pos = prompt.length + i;
        const got = await run(m, spec, [id], pos);
        assertLogitsClose(got.logits, rows(want.logits, V, pos, pos + 1), `${what} decode at ${pos}`);
        assert.deepEqual([...got.topk], choices(want.topk, pos, pos + 1), `${what} routing at ${pos}`);
      }
    } finally {
      m.memory.freeAll();
      m.gpu.device.destroy();
    }
  }
}

Deno.test("gpt-oss program: the whole model with its MXFP4 experts equals the CPU reference, prefill in chunks and decode", async () => {
  await compare(FIXTURE);
});

Deno.test("gpt-oss program: with random biases (experts' too), norm weights and sinks (the fixture's are 0, 1 and small)", async () => {
  const dir = await withRandomBiases();
  try {
    await compare(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
