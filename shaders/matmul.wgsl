// y[r, o] (+)= Σ_i x[r, i] · W[o, i] (+ bias[o])     W: [out, in] bf16 (torch Linear layout)
// One workgroup per (output row o, tile of TT rows r); WG threads split the input dimension.
// `gemv8` with `norm` 1 first RMS-normalises each row of x (weight g [in] bf16, one dispatch for the
// norm and the projection): y[r, o] = Σ_i W[o, i] · g[i] · x[r, i] · rsqrt(mean_i x[r, i]² + eps);
// with `norm` 2 it also writes the normalised rows to xn (from the workgroups of the first RW rows).
override WG: u32 = 64u;
override TT: u32 = 4u; // ≤ MAX_TT
const MAX_TT: u32 = 8u;

struct Params {
  in_dim: u32,      // must be even
  out_dim: u32,
  rows_mode: u32,   // 0: rows = step.t, 1: rows = step.head_rows
  accumulate: u32,  // 1: y += result (residual add)
  has_bias: u32,
  w_offset: u32,    // first u32 word of W in the weight buffer
  norm: u32,        // gemv8: 1 normalises x's rows first (RMSNorm with weight nw4), 2 also writes them to xn4
  eps: f32,         // the norm's epsilon
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 256>; // WG * TT ≤ 256

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let rows = select(step.t, step.head_rows, p.rows_mode == 1u);
  let lin = linear_wg(wg, nwg);
  let o = lin % p.out_dim;
  let r0 = (lin / p.out_dim) * TT;
  if (r0 >= rows) { return; } // uniform across the workgroup
  let half_in = p.in_dim / 2u;
  let wrow = p.w_offset + o * half_in;
  var acc: array<f32, MAX_TT>;
  for (var j = tid; j < half_in; j += WG) {
    let ww = w[wrow + j];
    let a = bf16_lo(ww);
    let b = bf16_hi(ww);
    for (var r = 0u; r < TT; r++) {
      if (r0 + r < rows) {
        let xi = (r0 + r) * p.in_dim + 2u * j;
        acc[r] += a * x[xi] + b * x[xi + 1u];
      }
    }
  }
  for (var r = 0u; r < TT; r++) { partial[r * WG + tid] = acc[r]; }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      for (var r = 0u; r < TT; r++) { partial[r * WG + tid] += partial[r * WG + tid + s]; }
    }
    workgroupBarrier();
  }
  if (tid < TT && r0 + tid < rows) {
    var v = partial[tid * WG];
    if (p.has_bias == 1u) {
      let bw = bias[o / 2u];
      v += select(bf16_lo(bw), bf16_hi(bw), (o & 1u) == 1u);
    }
    let yi = (r0 + tid) * p.out_dim + o;
    if (p.accumulate == 1u) { y[yi] += v; } else { y[yi] = v; }
  }
}

// The fast path when in_dim % 8 == 0: RW rows per workgroup, WG / RW threads per row, each thread
// loading 8 bf16 weights (one vec4<u32>) at a time; the same contract as `main`. The tiles of TT rows
// of x are the fast index of the workgroups, so the workgroups that read the same RW rows of W for
// different tiles (the sequences of a batched step) run side by side and W comes from memory about
// once; each row's sums are the same whichever tile it sits in.
override RW: u32 = 8u;

@group(0) @binding(6) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> nw4: array<vec4<u32>>; // the norm's weight, 8 bf16 per element
@group(0) @binding(9) var<storage, read_write> xn4: array<vec4<f32>>; // norm 2: the normalised rows

var<workgroup> part8: array<f32, 2048>; // ≥ WG · TT

@compute @workgroup_size(WG)
fn gemv8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
  let rows = select(step.t, step.head_rows, p.rows_mode == 1u);
  let lin = linear_wg(wg, nwg);
  let tiles = (rows + TT - 1u) / TT;
  let r0 = (lin % tiles) * TT;
  let o0 = (lin / tiles) * RW;
  if (r0 >= rows || o0 >= p.out_dim) { return; } // (a 2D grid's last workgroups are past the end)
  let lanes = WG / RW;
  let lane = tid % lanes;
  let o = o0 + tid / lanes;
  let n8 = p.in_dim / 8u;
  // with the norm: each row's 1 / RMS, its sum of squares split over all WG threads
  var inv: array<f32, MAX_TT>;
  for (var r = 0u; r < TT; r++) { inv[r] = 1.0; }
  if (p.norm >= 1u) {
    let n4 = p.in_dim / 4u;
    for (var r = 0u; r < TT; r++) {
      var ss = 0.0;
      if (r0 + r < rows) {
        for (var c = tid; c < n4; c += WG) { let v = x4[(r0 + r) * n4 + c]; ss += dot(v, v); }
      }
      part8[r * WG + tid] = ss;
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (tid < s) {
        for (var r = 0u; r < TT; r++) { part8[r * WG + tid] += part8[r * WG + tid + s]; }
      }
      workgroupBarrier();
    }
    for (var r = 0u; r < TT; r++) { inv[r] = inverseSqrt(part8[r * WG] / f32(p.in_dim) + p.eps); }
    workgroupBarrier(); // part8 is written again below
    if (p.norm == 2u && o0 == 0u) {
      for (var r = 0u; r < TT; r++) {
        if (r0 + r < rows) {
          for (var c = tid; c < n4; c += WG) {
            let g = nw4[c / 2u];
            let gw = select(g.xy, g.zw, (c & 1u) == 1u);
            let gv = vec4<f32>(bf16_lo(gw.x), bf16_hi(gw.x), bf16_lo(gw.y), bf16_hi(gw.y));
            xn4[(r0 + r) * n4 + c] = x4[(r0 + r) * n4 + c] * inv[r] * gv;
          }
        }
      }
    }
  }
  var acc: array<f32, MAX_TT>;
  if (o < p.out_dim) {
    let wrow = (p.w_offset / 4u) + o * n8;
    for (var j = lane; j < n8; j += lanes) {
      let ww = w4[wrow + j];
      var w0 = vec4<f32>(bf16_lo(ww.x), bf16_hi(ww.x), bf16_lo(ww.y), bf16_hi(ww.y));
      var w1 = vec4<f32>(bf16_lo(ww.z), bf16_hi(ww.z), bf16_lo(ww.w), bf16_hi(ww.w));
      if (p.norm >= 1u) {
        let g = nw4[j];
        w0 *= vec4<f32>(bf16_lo(g.x), bf16_hi(g.x), bf16_lo(g.y), bf16_hi(g.y));
        w1 *= vec4<f32>(bf16_lo(g.z), bf16_hi(g.z), bf16_lo(g.w), bf16_hi(g.w));
      }
      for (var r = 0u; r < TT; r++) {
        if (r0 + r < rows) {
          let xi = ((r0 + r) * p.in_dim) / 4u + 2u * j;
          acc[r] += dot(w0, x4[xi]) + dot(w1, x4[xi + 1u]);
        }
      }
    }
  }
  for (var r = 0u; r < TT; r++) { part8[r * WG + tid] = acc[r]; }
  workgroupBarrier();
  for (var s = lanes / 2u; s > 0u; s >>= 1u) {
    if (lane < s) {
      for (var r = 0u; r < TT; r++) { part8[r * WG + tid] += part8[r * WG + tid + s]; }
    }
    workgroupBarrier();
  }
  if (lane < TT && o < p.out_dim && r0 + lane < rows) {
    let r = lane;
    var v = part8[r * WG + tid - lane] * inv[r];
    if (p.has_bias == 1u) {
      let bw = bias[o / 2u];
      v += select(bf16_lo(bw), bf16_hi(bw), (o & 1u) == 1u);
    }
    let yi = (r0 + r) * p.out_dim + o;
    if (p.accumulate == 1u) { y[yi] += v; } else { y[yi] = v; }
  }
}
