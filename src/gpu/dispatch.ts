/**
 * A recorded kernel launch: pipeline, bind group and a rule for its workgroup count given the
 * call's shape. Built once when the engine loads and replayed for every call, so the hot path
 * creates no pipelines, bind groups or buffers.
 *
 * @module
 */
import { GpuMemory, type TrackedBuffer } from "./memory.ts";
import { GpuError } from "../errors.ts";
import { type Constants, PipelineCache } from "./pipelines.ts";

/** The shape of one forward call: rows in the call, rows whose logits are wanted, position of row 0. */
export interface CallShape {
  readonly t: number;
  readonly headRows: number;
  /** Absolute position of row 0 (the KV-cache length before the call). */
  readonly pos0: number;
}

/** One replayable kernel launch. */
export interface Dispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  /** Workgroups to launch for a call of this shape (a count, laid out by {@link grid}). */
  readonly workgroups: (shape: CallShape) => number;
}

/** Most workgroups per grid dimension (WebGPU's default `maxComputeWorkgroupsPerDimension`). */
export const MAX_GRID = 65535;

/** Lays `n` workgroups out on a 2D grid; shaders recover the index with `linear_wg`. */
export function grid(n: number): [number, number] {
  if (n <= MAX_GRID) return [Math.max(1, n), 1];
  return [MAX_GRID, Math.ceil(n / MAX_GRID)];
}

/** Packs params structs of u32/f32 fields (`f:` prefix marks an f32) into 16-byte-padded bytes. */
export function packParams(fields: Record<string, number>): ArrayBuffer {
  const entries = Object.entries(fields);
  const n = Math.max(4, Math.ceil(entries.length / 4) * 4);
  const buf = new ArrayBuffer(n * 4);
  const u = new Uint32Array(buf);
  const f = new Float32Array(buf);
  entries.forEach(([k, v], i) => {
    if (k.startsWith("f:")) f[i] = v;
    else u[i] = v >>> 0;
  });
  return buf;
}

/** Offset alignment WebGPU always accepts for a binding (`min*BufferOffsetAlignment` ≤ 256). */
export const UNIFORM_ALIGN = 256;

/**
 * One buffer holding the params of every dispatch at 256-byte offsets, sized up front so that its
 * bytes are known before anything is allocated. Kernels bind it as a read-only storage buffer, not a
 * uniform buffer: Mesa's lavapipe 22.x recompiles, and leaks, a shader at every dispatch that branches
 * on uniform-buffer values (see shaders/common.wgsl).
 */
export class UniformArena {
  readonly #device: GPUDevice;
  readonly #memory: GpuMemory;
  readonly slots: number;
  #buffer: TrackedBuffer;
  #next = 0;

  /** An arena of `slots` params blocks. */
  constructor(device: GPUDevice, memory: GpuMemory, slots: number) {
    this.#device = device;
    this.#memory = memory;
    this.slots = slots;
    this.#buffer = memory.alloc(
      "uniforms",
      UniformArena.bytes(slots),
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      "tables",
    );
  }

  /** Bytes of an arena of `slots` blocks. */
  static bytes(slots: number): number {
    return slots * UNIFORM_ALIGN;
  }

  /** Forgets every block (before re-recording); the buffer stays. */
  reset(): void {
    this.#next = 0;
  }

  /** Stores `params` (≤ 256 bytes) and returns where to bind it. */
  push(params: ArrayBuffer): GPUBufferBinding {
    if (this.#next >= this.slots) throw new GpuError(`Uniform arena full: ${this.slots} blocks`);
    const offset = this.#next++ * UNIFORM_ALIGN;
    this.#device.queue.writeBuffer(this.#buffer.buffer, offset, params);
    return { buffer: this.#buffer.buffer, offset, size: params.byteLength };
  }

  /** Frees the buffer. */
  destroy(): void {
    this.#memory.free(this.#buffer);
  }
}

/** What a kernel wrapper needs to record dispatches. */
export interface KernelContext {
  readonly device: GPUDevice;
  readonly pipelines: PipelineCache;
  readonly memory: GpuMemory;
  readonly uniforms: UniformArena;
  /** The per-call Step (common.wgsl's `Step`), a read-only storage buffer in the shaders. */
  readonly step: GPUBuffer;
}

/**
 * A budgeted allocator on `device` (`limit` bytes, unlimited by default), its Step buffer and the
 * kernels' context with `uniformSlots` parameter slots.
 */
export function kernelContext(
  device: GPUDevice,
  uniformSlots: number,
  limit = Infinity,
): { memory: GpuMemory; stepBuffer: TrackedBuffer; ctx: KernelContext } {
  const memory = new GpuMemory(device);
  memory.limit = limit;
  const stepBuffer = memory.alloc("step", 32, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "tables");
  const ctx: KernelContext = {
    device,
    pipelines: new PipelineCache(device),
    memory,
    uniforms: new UniformArena(device, memory, uniformSlots),
    step: stepBuffer.buffer,
  };
  return { memory, stepBuffer, ctx };
}

/** Records one dispatch: compiles (cached) the pipeline, writes its params, binds `buffers` by index. */
export async function record(
  ctx: KernelContext,
  spec: {
    label: string;
    file: string;
    entry?: string;
    constants?: Constants;
    params: ArrayBuffer;
    buffers: Record<number, GPUBuffer>;
    workgroups: (shape: CallShape) => number;
  },
): Promise<Dispatch> {
  const pipeline = await ctx.pipelines.get(spec.file, spec.entry ?? "main", spec.constants ?? {});
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: { buffer: ctx.step } },
    { binding: 1, resource: ctx.uniforms.push(spec.params) },
  ];
  for (const [b, buffer] of Object.entries(spec.buffers)) {
    entries.push({ binding: Number(b), resource: { buffer } });
  }
  const bindGroup = ctx.device.createBindGroup({
    label: spec.label,
    layout: pipeline.getBindGroupLayout(0),
    entries,
  });
  return { label: spec.label, pipeline, bindGroup, workgroups: spec.workgroups };
}

/** Encodes `dispatches` for a call of `shape` into one compute pass. */
export function encode(pass: GPUComputePassEncoder, dispatches: readonly Dispatch[], shape: CallShape): void {
  for (const d of dispatches) {
    const n = d.workgroups(shape);
    if (n <= 0) continue;
    const [x, y] = grid(n);
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(x, y);
  }
}
