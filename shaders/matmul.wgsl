// y[r, o] (+)= Σ_i x[r, i] · W[o, i] (+ bias[o])     W: [out, in] bf16 (torch Linear layout)
// One workgroup per (output row o, tile of TT rows r); WG threads split the input dimension.
// `gemv8` with `norm` 1 first RMS-normalises each row of x (weight g [in] bf16, one dispatch for the
// norm and the projection): y[r, o] = Σ_i W[o, i] · g[i] · x[r, i] · rsqrt(mean_i x[r, i]² + eps);
// with `norm` 2 it also writes the normalised rows to xn (from the workgroups of the first RW rows);
// with `norm` 3 it scales each row's result by a sigmoid gate instead, σ(Σ_i xn[r, i] · g[i]) over
// gate_dim (Qwen2-MoE's shared_expert_gate, whose output multiplies the shared expert's).
// `gemv8` with `glu` 1 is SwiGLU's first half in one dispatch: y[r, o] = silu(x[r] · W[o]) · (x[r] · U[o])
// (gate_proj W, up_proj U from w2_offset of binding 10; torch: act_fn(gate_proj(x)) * up_proj(x)).
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
  norm: u32,        // gemv8: 1 normalises x's rows first (RMSNorm with weight nw4), 2 also writes them to xn4,
                    // 3 scales the results by the sigmoid gate σ(xn4[r] · nw4)
  eps: f32,         // the norm's epsilon
  glu: u32,         // gemv8: 1 SwiGLU's silu(x · W) · (x · U), U from w2_offset of u4
  w2_offset: u32,   // first u32 word of U in its buffer
  gate_dim: u32,    // norm 3: the gate's input width (a multiple of 8)
  _p0: u32,
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

@group(0) @binding(10) var<storage, read> u4: array<vec4<u32>>; // glu: up_proj, 8 bf16 per element

var<workgroup> part8: array<f32, 2048>; // ≥ WG · TT

// part8[r · WG + t], for each of the TT rows r, summed over each run of n neighbouring threads t (n a
// power of two dividing WG): the run's first thread holds its sum. Called once every thread has
// written its values.
fn sum_runs8(tid: u32, n: u32) {
  workgroupBarrier();
  for (var s = n / 2u; s > 0u; s >>= 1u) {
    if (tid % n < s) {
      for (var r = 0u; r < TT; r++) { part8[r * WG + tid] += part8[r * WG + tid + s]; }
    }
    workgroupBarrier();
  }
}

@compute @workgroup_size(WG)
fn gemv8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
  let rows = select(step.t, step.head_rows, p.rows_mode == 1u);
  let lin = linear_wg(wg, nwg);
  let tiles = (rows + TT - 1u) / TT;
  let r0 = (lin % tiles) * TT;
  // glu: the workgroup's first RW / 2 rows of weights are gate rows, the others the same outputs' up rows
  let glu = p.glu == 1u;
  let outs = select(RW, RW / 2u, glu); // outputs per workgroup
  let o0 = (lin / tiles) * outs;
  if (r0 >= rows || o0 >= p.out_dim) { return; } // (a 2D grid's last workgroups are past the end)
  let lanes = WG / RW;
  let lane = tid % lanes;
  let wr = tid / lanes; // this thread's row of weights in the workgroup (lanes threads apiece)
  let is_up = glu && wr >= outs;
  let o = o0 + select(wr, wr - outs, is_up);
  let n8 = p.in_dim / 8u;
  // with the norm: each row's 1 / RMS, its sum of squares split over all WG threads
  var inv: array<f32, MAX_TT>;
  for (var r = 0u; r < TT; r++) { inv[r] = 1.0; }
  if (p.norm == 1u || p.norm == 2u) {
    let n4 = p.in_dim / 4u;
    for (var r = 0u; r < TT; r++) {
      var ss = 0.0;
      if (r0 + r < rows) {
        for (var c = tid; c < n4; c += WG) { let v = x4[(r0 + r) * n4 + c]; ss += dot(v, v); }
      }
      part8[r * WG + tid] = ss;
    }
    sum_runs8(tid, WG);
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
  if (p.norm == 3u) {
    // each row's sigmoid gate σ(xn[r] · g) over gate_dim, its dot product split over all WG threads
    let g8 = p.gate_dim / 8u;
    for (var r = 0u; r < TT; r++) {
      var d = 0.0;
      if (r0 + r < rows) {
        for (var c = tid; c < g8; c += WG) {
          let g = nw4[c];
          let xi = ((r0 + r) * p.gate_dim) / 4u + 2u * c;
          d += dot(xn4[xi], vec4<f32>(bf16_lo(g.x), bf16_hi(g.x), bf16_lo(g.y), bf16_hi(g.y)));
          d += dot(xn4[xi + 1u], vec4<f32>(bf16_lo(g.z), bf16_hi(g.z), bf16_lo(g.w), bf16_hi(g.w)));
        }
      }
      part8[r * WG + tid] = d;
    }
    sum_runs8(tid, WG);
    for (var r = 0u; r < TT; r++) { inv[r] = 1.0 / (1.0 + exp(-part8[r * WG])); }
    workgroupBarrier(); // part8 is written again below
  }
  var acc: array<f32, MAX_TT>;
  if (o < p.out_dim) {
    let wrow = select(p.w_offset, p.w2_offset, is_up) / 4u + o * n8;
    for (var j = lane; j < n8; j += lanes) {
      var ww: vec4<u32>;
      if (is_up) { ww = u4[wrow + j]; } else { ww = w4[wrow + j]; } // (uniform across a row's lanes)
      var w0 = vec4<f32>(bf16_lo(ww.x), bf16_hi(ww.x), bf16_lo(ww.y), bf16_hi(ww.y));
      var w1 = vec4<f32>(bf16_lo(ww.z), bf16_hi(ww.z), bf16_lo(ww.w), bf16_hi(ww.w));
      if (p.norm == 1u || p.norm == 2u) {
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
  sum_runs8(tid, lanes);
  if (lane < TT && o < p.out_dim && r0 + lane < rows && !is_up) {
    let r = lane;
    var v = part8[r * WG + tid - lane] * inv[r];
    if (glu) {
      let u = part8[r * WG + tid - lane + outs * lanes]; // the same output's up row, outs rows on
      v = v / (1.0 + exp(-v)) * u;
    }
    if (p.has_bias == 1u) {
      let bw = bias[o / 2u];
      v += select(bf16_lo(bw), bf16_hi(bw), (o & 1u) == 1u);
    }
    let yi = (r0 + r) * p.out_dim + o;
    if (p.accumulate == 1u) { y[yi] += v; } else { y[yi] = v; }
  }
}

// The tiled path, for calls of many rows (prefill chunks): a workgroup multiplies TR rows of x by TO rows
// of W, both staged in workgroup memory TBK columns at a time, so that each weight it reads serves TR rows
// (the GEMVs read W again for every TT rows) and each input serves TO outputs. Thread (tq, oq) of the
// TR / 4 × TO / 8 accumulates rows 4tq … 4tq + 3 against outputs 4oq … 4oq + 3 of each half of the tile
// (TO / 2 apart: a warp's loads of one column are neighbouring vec4s): per column three vec4 loads of
// workgroup memory for 32 multiply-adds. Each output sums its columns in order, in f32, whatever other
// rows share its tile. The same contract as `main`, without the norm; needs in_dim % 8 == 0.
override TR: u32 = 64u; //          rows of x per workgroup, a multiple of 4
override TO: u32 = 128u; //         rows of W (outputs) per workgroup, a multiple of 8
override TBK: u32 = 16u; //         columns per stage, a multiple of 8 (whole octets of W)
override TQ: u32 = TO / 8u; //      output quads per half
override TTHREADS: u32 = TR / 4u * TQ;
override TXS: u32 = TBK * TR / 4u;
override TWS: u32 = TBK * TO / 4u;

// One stage: txs[k · TR/4 + q] = x of rows 4q … 4q + 3 at column c0 + k; tws[k · TO/4 + q] = W of tile
// outputs 4q … 4q + 3 at column c0 + k. With TR 64, TO 128 and TBK 16: 4 + 8 KiB.
var<workgroup> txs: array<vec4<f32>, TXS>;
var<workgroup> tws: array<vec4<f32>, TWS>;

@compute @workgroup_size(TTHREADS)
fn tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) tid: u32) {
  let rows = select(step.t, step.head_rows, p.rows_mode == 1u);
  let lin = linear_wg(wg, nwg);
  // row tiles are the fast index: the workgroups reading one block of W run side by side
  let rtiles = (rows + TR - 1u) / TR;
  let r0 = (lin % rtiles) * TR;
  let o0 = (lin / rtiles) * TO;
  if (r0 >= rows || o0 >= p.out_dim) { return; } // uniform across the workgroup
  let tq = tid / TQ;
  let oq = tid % TQ;
  let n4 = p.in_dim / 4u;
  let n8 = p.in_dim / 8u;
  let wbase = p.w_offset / 4u;
  // eight named accumulators (an array, indexed by a variable in the epilogue, would live in local memory)
  var a0 = vec4<f32>(0.0);
  var a1 = vec4<f32>(0.0);
  var a2 = vec4<f32>(0.0);
  var a3 = vec4<f32>(0.0);
  var a4 = vec4<f32>(0.0);
  var a5 = vec4<f32>(0.0);
  var a6 = vec4<f32>(0.0);
  var a7 = vec4<f32>(0.0);
  for (var c0 = 0u; c0 < p.in_dim; c0 += TBK) {
    // TR · TBK / 4 quads of x (four neighbouring columns of one row)
    for (var s = tid; s < TR * (TBK / 4u); s += TTHREADS) {
      let j = s / (TBK / 4u);
      let k0 = 4u * (s % (TBK / 4u));
      var v = vec4<f32>(0.0);
      if (r0 + j < rows && c0 + k0 < p.in_dim) { v = x4[(r0 + j) * n4 + (c0 + k0) / 4u]; }
      let xq = k0 * (TR / 4u) + j / 4u;
      txs[xq][j % 4u] = v.x;
      txs[xq + TR / 4u][j % 4u] = v.y;
      txs[xq + 2u * (TR / 4u)][j % 4u] = v.z;
      txs[xq + 3u * (TR / 4u)][j % 4u] = v.w;
    }
    // TO · TBK / 8 octets of W (eight neighbouring bf16 of one row)
    for (var s = tid; s < TO * (TBK / 8u); s += TTHREADS) {
      let o = s / (TBK / 8u);
      let k0 = 8u * (s % (TBK / 8u));
      var ww = vec4<u32>(0u);
      if (o0 + o < p.out_dim && c0 + k0 < p.in_dim) { ww = w4[wbase + (o0 + o) * n8 + (c0 + k0) / 8u]; }
      let wq = k0 * (TO / 4u) + o / 4u;
      let c = o % 4u;
      tws[wq][c] = bf16_lo(ww.x);
      tws[wq + TO / 4u][c] = bf16_hi(ww.x);
      tws[wq + 2u * (TO / 4u)][c] = bf16_lo(ww.y);
      tws[wq + 3u * (TO / 4u)][c] = bf16_hi(ww.y);
      tws[wq + 4u * (TO / 4u)][c] = bf16_lo(ww.z);
      tws[wq + 5u * (TO / 4u)][c] = bf16_hi(ww.z);
      tws[wq + 6u * (TO / 4u)][c] = bf16_lo(ww.w);
      tws[wq + 7u * (TO / 4u)][c] = bf16_hi(ww.w);
    }
    workgroupBarrier();
    for (var k = 0u; k < TBK; k++) {
      let a = txs[k * (TR / 4u) + tq];
      let b0 = tws[k * (TO / 4u) + oq];
      let b1 = tws[k * (TO / 4u) + TQ + oq];
      a0 += a.x * b0;
      a1 += a.y * b0;
      a2 += a.z * b0;
      a3 += a.w * b0;
      a4 += a.x * b1;
      a5 += a.y * b1;
      a6 += a.z * b1;
      a7 += a.w * b1;
    }
    workgroupBarrier();
  }
  let r = r0 + 4u * tq;
  let o = o0 + 4u * oq;
  let o1 = o + TO / 2u;
  tiled_store(r, o, a0, rows);
  tiled_store(r + 1u, o, a1, rows);
  tiled_store(r + 2u, o, a2, rows);
  tiled_store(r + 3u, o, a3, rows);
  tiled_store(r, o1, a4, rows);
  tiled_store(r + 1u, o1, a5, rows);
  tiled_store(r + 2u, o1, a6, rows);
  tiled_store(r + 3u, o1, a7, rows);
}

// y[r, o … o + 3] (+)= v (+ bias) where the row and outputs exist.
fn tiled_store(r: u32, o: u32, v: vec4<f32>, rows: u32) {
  if (r >= rows) { return; }
  for (var q = 0u; q < 4u; q++) {
    if (o + q < p.out_dim) {
      var e = v[q];
      if (p.has_bias == 1u) {
        let bw = bias[(o + q) / 2u];
        e += select(bf16_lo(bw), bf16_hi(bw), ((o + q) & 1u) == 1u);
      }
      let yi = r * p.out_dim + o + q;
      if (p.accumulate == 1u) { y[yi] += e; } else { y[yi] = e; }
    }
  }
}
