// RMSNorm over rows of `cols` values: y = x · rsqrt(mean(x²) + eps) · weight   (weight: [cols] bf16)
// torch: hidden_states * torch.rsqrt(variance + self.variance_epsilon), then self.weight * hidden_states
// One workgroup per row. `main` writes to y; `in_place` normalises y itself (q/k norms).
override WG: u32 = 64u;

struct Params {
  cols: u32,
  rows_per_token: u32, // rows = tokens × rows_per_token (per-head norms have one row per head)
  rows_mode: u32,      // 0: tokens = step.t from row 0; 1: tokens = step.head_rows from row step.head_row0
  _pad: u32,
  eps: f32,
  _pad1: u32,
  _pad2: u32,
  _pad3: u32,
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

//!include reduce.wgsl

fn wgt(c: u32) -> f32 {
  let ww = weight[c / 2u];
  return select(bf16_lo(ww), bf16_hi(ww), (c & 1u) == 1u);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let row = linear_wg(wg, nwg);
  let tokens = select(step.t, step.head_rows, p.rows_mode == 1u);
  if (row >= tokens * p.rows_per_token) { return; }
  let src_row = select(row, row + step.head_row0 * p.rows_per_token, p.rows_mode == 1u);
  let base = src_row * p.cols;
  var ss = 0.0;
  for (var c = tid; c < p.cols; c += WG) { let v = x[base + c]; ss += v * v; }
  let inv = inverseSqrt(wg_sum(tid, ss) / f32(p.cols) + p.eps);
  let out = row * p.cols;
  for (var c = tid; c < p.cols; c += WG) { y[out + c] = x[base + c] * inv * wgt(c); }
}

@compute @workgroup_size(WG)
fn in_place(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
  let row = linear_wg(wg, nwg);
  if (row >= step.t * p.rows_per_token) { return; }
  let base = row * p.cols;
  var ss = 0.0;
  for (var c = tid; c < p.cols; c += WG) { let v = y[base + c]; ss += v * v; }
  let inv = inverseSqrt(wg_sum(tid, ss) / f32(p.cols) + p.eps);
  for (var c = tid; c < p.cols; c += WG) { y[base + c] = y[base + c] * inv * wgt(c); }
}
