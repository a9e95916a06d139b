// Workgroup reductions over the WG threads of a workgroup, included by `//!include reduce.wgsl` (the
// including shader declares `override WG`, a power of two). Every thread gets the result. The leading
// barrier lets the next reduction reuse the scratch at once; only what a shader calls takes workgroup
// memory.
var<workgroup> wg_f32: array<f32, WG>;
var<workgroup> wg_u32: array<u32, WG>;
var<workgroup> wg_vec2: array<vec2<f32>, WG>;

fn wg_sum(tid: u32, v: f32) -> f32 {
  workgroupBarrier();
  wg_f32[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_f32[tid] += wg_f32[tid + s]; }
    workgroupBarrier();
  }
  return wg_f32[0];
}

// v summed over each run of n neighbouring threads (n a power of two dividing WG): unlike the others, the
// sums stay in wg_f32, each at its run's first thread.
fn wg_sum_runs(tid: u32, n: u32, v: f32) {
  workgroupBarrier();
  wg_f32[tid] = v;
  workgroupBarrier();
  for (var s = n / 2u; s > 0u; s >>= 1u) {
    if (tid % n < s) { wg_f32[tid] += wg_f32[tid + s]; }
    workgroupBarrier();
  }
}

fn wg_max(tid: u32, v: f32) -> f32 {
  workgroupBarrier();
  wg_f32[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_f32[tid] = max(wg_f32[tid], wg_f32[tid + s]); }
    workgroupBarrier();
  }
  return wg_f32[0];
}

fn wg_sum_u32(tid: u32, v: u32) -> u32 {
  workgroupBarrier();
  wg_u32[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_u32[tid] += wg_u32[tid + s]; }
    workgroupBarrier();
  }
  return wg_u32[0];
}

fn wg_min_u32(tid: u32, v: u32) -> u32 {
  workgroupBarrier();
  wg_u32[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_u32[tid] = min(wg_u32[tid], wg_u32[tid + s]); }
    workgroupBarrier();
  }
  return wg_u32[0];
}

fn wg_sum2(tid: u32, v: vec2<f32>) -> vec2<f32> {
  workgroupBarrier();
  wg_vec2[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_vec2[tid] += wg_vec2[tid + s]; }
    workgroupBarrier();
  }
  return wg_vec2[0];
}

var<workgroup> wg_vec4: array<vec4<f32>, WG>;

fn wg_sum4(tid: u32, v: vec4<f32>) -> vec4<f32> {
  workgroupBarrier();
  wg_vec4[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { wg_vec4[tid] += wg_vec4[tid + s]; }
    workgroupBarrier();
  }
  return wg_vec4[0];
}
