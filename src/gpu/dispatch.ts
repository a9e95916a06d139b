/**
 * A recorded kernel launch: pipeline, bind group and a rule for its workgroup count given the
 * call's shape. Built once when the engine loads and replayed for every call, so the hot path
 * creates no pipelines, bind groups or buffers.
 *
 * @module
 */
import { type Allocation, GpuMemory, type TrackedBuffer } from "./memory.ts";
import { GpuError } from "../errors.ts";
import { type Constants, PipelineCache } from "./pipelines.ts";

/** The shape of one forward call: rows in the call, rows whose logits are wanted, position of row 0. */
export interface CallShape {
  readonly t: number;
  readonly headRows: number;
  /** Absolute position of row 0 (the KV-cache length before the call) when its rows are one sequence's, in order. */
  readonly pos0: number;
  /**
   * The most attention splits of any row (src/kernels/step.ts `callSplits`), for a call whose rows sit
   * at positions of their own (several sequences); default: those of one sequence's rows from `pos0`.
   */
  readonly splits?: number;
}

/** One replayable kernel launch. */
export interface Dispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  /** Workgroups to launch for a call of this shape (a count, laid out by {@link grid}). */
  readonly workgroups: (shape: CallShape) => number;
}

/** `d`, launching nothing on the calls for which `run` is false (of two recorded paths, one runs). */
export function onlyWhen(d: Dispatch, run: (shape: CallShape) => boolean): Dispatch {
  return { ...d, workgroups: (s) => run(s) ? d.workgroups(s) : 0 };
}

/** Most workgroups per grid dimension (WebGPU's default `maxComputeWorkgroupsPerDimension`). */
export const MAX_GRID = 65535;

/** Lays `n` workgroups out on a 2D grid; shaders recover the index with `linear_wg`. */
export function grid(n: number): [number, number] {
  if (n <= MAX_GRID) return [Math.max(1, n), 1];
  return [MAX_GRID, Math.ceil(n / MAX_GRID)];
}

/** A field's name as a caller gives its value: `"f:eps"` is `eps` (an f32); `"_p0"` (padding) takes none. */
type FieldValue<F> = F extends `f:${infer N}` ? N : F extends `_${string}` ? never : F;

/**
 * The layout of a kernel's params struct (or `Step`) of 4-byte scalars, in the struct's order: `"f:name"` marks an
 * f32, `"_name"` padding (written 0), anything else a u32. One per struct, shared by the kernel
 * wrapper that packs it and by the test that checks it against the WGSL declaration.
 */
export interface ParamsLayout<F extends readonly string[] = readonly string[]> {
  /** The shader file and the struct's name in it. */
  readonly file: string;
  readonly struct: string;
  readonly fields: F;
  /** Bytes {@link ParamsLayout.pack} returns: a field per 4 bytes, padded to 16. */
  readonly bytes: number;
  /** The struct's bytes: every field at 4·index, padded to 16 bytes. */
  pack(values: Readonly<Record<FieldValue<F[number]>, number>>): ArrayBuffer;
}

const LAYOUTS: ParamsLayout[] = [];

/** Every layout defined so far (the modules that define them must have been imported). */
export function paramsLayouts(): readonly ParamsLayout[] {
  return LAYOUTS;
}

/** Defines the layout of `struct` (default `Params`) in `shaders/<file>`; see {@link ParamsLayout}. */
export function paramsLayout<const F extends readonly string[]>(
  file: string,
  fields: F,
  struct = "Params",
): ParamsLayout<F> {
  const words = Math.max(4, Math.ceil(fields.length / 4) * 4);
  const layout: ParamsLayout<F> = {
    file,
    struct,
    fields,
    bytes: words * 4,
    pack(values) {
      const buf = new ArrayBuffer(words * 4);
      const u = new Uint32Array(buf);
      const f = new Float32Array(buf);
      const given = values as Readonly<Record<string, number>>;
      fields.forEach((field, i) => {
        if (field.startsWith("_")) return;
        const name = field.replace(/^f:/, "");
        const v = given[name];
        if (v === undefined) throw new RangeError(`${file} ${struct}: no value for ${name}`);
        if (field.startsWith("f:")) f[i] = v;
        else u[i] = v >>> 0;
      });
      return buf;
    },
  };
  LAYOUTS.push(layout as ParamsLayout);
  return layout;
}

/** Offset alignment WebGPU always accepts for a binding (`min*BufferOffsetAlignment` ≤ 256). */
export const PARAMS_ALIGN = 256;

/**
 * One buffer holding the params of every dispatch at 256-byte offsets, sized up front so that its
 * bytes are known before anything is allocated. Kernels bind it as a read-only storage buffer, not a
 * uniform buffer: Mesa's lavapipe 22.x recompiles, and leaks, a shader at every dispatch that branches
 * on uniform-buffer values (see shaders/common.wgsl).
 */
export class ParamsArena {
  readonly #device: GPUDevice;
  readonly slots: number;
  readonly #buffer: TrackedBuffer;
  #next = 0;

  /** An arena over `buffer`, a storage buffer of {@link ParamsArena.bytes} bytes. */
  constructor(device: GPUDevice, buffer: TrackedBuffer) {
    this.#device = device;
    this.#buffer = buffer;
    this.slots = Math.floor(buffer.size / PARAMS_ALIGN);
  }

  /** Bytes of an arena of `slots` blocks. */
  static bytes(slots: number): number {
    return slots * PARAMS_ALIGN;
  }

  /** Forgets every block (before re-recording); the buffer stays. */
  reset(): void {
    this.#next = 0;
  }

  /** Stores `params` (≤ 256 bytes) and returns where to bind it. */
  push(params: ArrayBuffer): GPUBufferBinding {
    if (this.#next >= this.slots) throw new GpuError(`Uniform arena full: ${this.slots} blocks`);
    const offset = this.#next++ * PARAMS_ALIGN;
    this.#device.queue.writeBuffer(this.#buffer.buffer, offset, params);
    return { buffer: this.#buffer.buffer, offset, size: params.byteLength };
  }
}

/** What a kernel wrapper needs to record dispatches. */
export interface KernelContext {
  readonly device: GPUDevice;
  readonly pipelines: PipelineCache;
  readonly params: ParamsArena;
  /** The per-call Step (common.wgsl's `Step`), a read-only storage buffer in the shaders. */
  readonly step: GPUBuffer;
}

/** Bytes of common.wgsl's `Step` (see src/kernels/step.ts). */
export const STEP_BYTES = 32;

/** The buffers a kernel context records over: the Step and a params arena of `paramSlots` blocks. */
export function contextTables(paramSlots: number): Allocation[] {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  return [
    { name: "step", bytes: STEP_BYTES, usage, category: "tables" },
    { name: "params", bytes: ParamsArena.bytes(paramSlots), usage, category: "tables" },
  ];
}

/** The kernels' context over `tables`, allocated from {@link contextTables}. */
export function contextOver(device: GPUDevice, tables: ReadonlyMap<string, TrackedBuffer>): KernelContext {
  const step = tables.get("step");
  const params = tables.get("params");
  if (!step || !params) throw new Error("Internal: a kernel context needs the step and params tables");
  return {
    device,
    pipelines: new PipelineCache(device),
    params: new ParamsArena(device, params),
    step: step.buffer,
  };
}

/**
 * For kernel tests and benches: an allocator on `device` (`limit` bytes, unlimited by default), its
 * Step buffer and a kernels' context with `paramSlots` parameter slots.
 */
export function kernelContext(
  device: GPUDevice,
  paramSlots: number,
  limit = Infinity,
): { memory: GpuMemory; stepBuffer: TrackedBuffer; ctx: KernelContext } {
  const memory = new GpuMemory(device);
  memory.limit = limit;
  const tables = memory.allocAll(contextTables(paramSlots));
  return { memory, stepBuffer: tables.get("step")!, ctx: contextOver(device, tables) };
}

/** Records one dispatch: compiles (cached) the pipeline, writes its params, binds `buffers` by index. */
export async function record(
  ctx: KernelContext,
  spec: {
    label: string;
    file: string;
    entry?: string;
    constants?: Constants;
    /** The params block, or the binding of one pushed already (dispatches of one call site sharing it). */
    params: ArrayBuffer | GPUBufferBinding;
    buffers: Record<number, GPUBuffer>;
    workgroups: (shape: CallShape) => number;
  },
): Promise<Dispatch> {
  const pipeline = await ctx.pipelines.get(spec.file, spec.entry ?? "main", spec.constants ?? {});
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: { buffer: ctx.step } },
    { binding: 1, resource: spec.params instanceof ArrayBuffer ? ctx.params.push(spec.params) : spec.params },
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
