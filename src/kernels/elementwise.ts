/**
 * `shaders/elementwise.wgsl`: SiLU·mul of the dense MLP and the sigmoid-gated add of Qwen2-MoE's
 * shared expert.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout("elementwise.wgsl", ["n"] as const);

const WG = 64;

/** Records a[t, i] = silu(a[t, i]) · b[t, i] over [T, n]. */
export function siluMul(
  ctx: KernelContext,
  o: { label: string; a: GPUBuffer; b: GPUBuffer; n: number },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "elementwise.wgsl",
    entry: "silu_mul",
    params: PARAMS.pack({ n: o.n }),
    buffers: { 2: o.a, 3: o.b },
    workgroups: (s) => Math.ceil((s.t * o.n) / WG),
  });
}

/** Records y[t, i] += sigmoid(g[t]) · s[t, i] over [T, n]. */
export function sigmoidGatedAdd(
  ctx: KernelContext,
  o: { label: string; y: GPUBuffer; s: GPUBuffer; gate: GPUBuffer; n: number },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "elementwise.wgsl",
    entry: "sigmoid_gated_add",
    params: PARAMS.pack({ n: o.n }),
    buffers: { 2: o.y, 3: o.s, 4: o.gate },
    workgroups: (s) => Math.ceil((s.t * o.n) / WG),
  });
}
