// Experts, second half: the down projection of each routed expert's h, weighted by the router and
// summed into the residual (`down_sum`; `down_sum_bias` adds each copy's bias, gpt-oss), read through
// the slot table in each tier's format.
//   h: [T·K, I] f32 (experts.wgsl)   down: [D, I] per copy (+ [D] bf16 bias)   topk_w: [T, K]
//   y: [T, D] residual
// torch: current_hidden_states = nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])
//        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
//   gpt-oss: out = gated_output @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
//            weighted_output = out * routing_weights[token_idx, expert_idx, None]
// As in experts.wgsl, the tokens are the workgroups' fast index: the workgroups reading the same rows
// of the experts for different tokens run side by side.
override WG: u32 = 64u;

//!include expert_slots.wgsl
//!include expert_formats.wgsl
//!include reduce.wgsl

@group(0) @binding(7) var<storage, read> h: array<f32>;
@group(0) @binding(8) var<storage, read> topk_w: array<f32>;
@group(0) @binding(9) var<storage, read> down: array<u32>;
@group(0) @binding(10) var<storage, read_write> y: array<f32>;

const DOWN: u32 = 2u;

fn weight(m: u32, i: u32) -> u32 {
  return down[i];
}

fn input(m: u32, i: u32) -> f32 {
  return h[i];
}

// Rows d … d + 3 (those < dim) of down, dotted with h from element v0.
fn down_rows(fmt: u32, base: u32, d: u32, v0: u32, tid: u32) -> vec4<f32> {
  let pw = per_word(fmt);
  let rows = min(p.dim - d, 4u);
  var acc = vec4<f32>(0.0);
  for (var j = tid; j < p.inter / pw; j += WG) {
    let xs = load_x(DOWN, fmt, v0 + j * pw);
    acc.x += word_dot(DOWN, fmt, base, p.dim, p.inter, d, j, xs);
    if (rows > 1u) { acc.y += word_dot(DOWN, fmt, base, p.dim, p.inter, d + 1u, j, xs); }
    if (rows > 2u) { acc.z += word_dot(DOWN, fmt, base, p.dim, p.inter, d + 2u, j, xs); }
    if (rows > 3u) { acc.w += word_dot(DOWN, fmt, base, p.dim, p.inter, d + 3u, j, xs); }
  }
  return acc;
}

// Biases d … d + 3 (those < dim; 0 past them) of copy `c` of down (gpt-oss).
fn down_bias(c: Copy, d: u32) -> vec4<f32> {
  var b = vec4<f32>(0.0);
  for (var r = 0u; r < min(p.dim - d, 4u); r++) { b[r] = copy_bias(DOWN, c, p.dim, p.inter, d + r); }
  return b;
}

// Thread tid's share of Σ_k w[t, k] · (h[t·K + k] · down_s[d…d+3] (+ b_s[d…d+3] when `bias`, a constant at
// each call, in thread 0's share)).
fn down_share(t: u32, d: u32, tid: u32, bias: bool) -> vec4<f32> {
  var acc = vec4<f32>(0.0);
  for (var k = 0u; k < p.top_k; k++) {
    let tk = t * p.top_k + k;
    let entry = entry_of(tk);
    if (entry < 0) { continue; }
    let c = copy_at(entry);
    var v: vec4<f32>;
    if (c.tier == 0u) {
      v = down_rows(HI_FMT, c.base, d, tk * p.inter, tid);
    } else {
      v = down_rows(LO_FMT, c.base, d, tk * p.inter, tid);
    }
    if (bias && tid == 0u) { v += down_bias(c, d); }
    acc += topk_w[tk] * v;
  }
  return acc;
}

// y[t, d…d+3] += Σ_k w[t, k] · (h[t·K + k] · down_s[d]), one workgroup per t and four of d.
@compute @workgroup_size(WG)
fn down_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin % step.t;
  let d = 4u * (lin / step.t);
  if (d >= p.dim) { return; } // (a 2D grid's last workgroups are past the end)
  let sum = wg_sum4(tid, down_share(t, d, tid, false));
  if (tid == 0u) {
    for (var r = 0u; r < min(p.dim - d, 4u); r++) { y[t * p.dim + d + r] += sum[r]; }
  }
}

// y[t, d…d+3] += Σ_k w[t, k] · (h[t·K + k] · down_s[d] + b_s[d]) (gpt-oss), one workgroup per t and four
// of d.
@compute @workgroup_size(WG)
fn down_sum_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin % step.t;
  let d = 4u * (lin / step.t);
  if (d >= p.dim) { return; } // (a 2D grid's last workgroups are past the end)
  let sum = wg_sum4(tid, down_share(t, d, tid, true));
  if (tid == 0u) {
    for (var r = 0u; r < min(p.dim - d, 4u); r++) { y[t * p.dim + d + r] += sum[r]; }
  }
}

// The bf16 fast path of `down_sum` (every copy bf16, inter a multiple of 8): y[t, d…d+3] += Σ_k w[t, k] ·
// (h[t·K + k] · down_s[d]), one workgroup per t and four of d, WG / 4 threads a row of down, each loading
// eight weights (a vec4<u32>) and eight of h at a time: a quarter of the loads of `down_sum`.
@group(0) @binding(11) var<storage, read> down8: array<vec4<u32>>; // down, 8 bf16 per element
@group(0) @binding(12) var<storage, read> h4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn down_sum_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin % step.t;
  let d0 = 4u * (lin / step.t);
  if (d0 >= p.dim) { return; } // (a 2D grid's last workgroups are past the end)
  let lanes = WG / 4u;
  let lane = tid % lanes;
  let d = d0 + tid / lanes;
  let n8 = p.inter / 8u;
  var acc = 0.0;
  if (d < p.dim) {
    for (var k = 0u; k < p.top_k; k++) {
      let tk = t * p.top_k + k;
      let entry = entry_of(tk);
      if (entry < 0) { continue; }
      let wrow = copy_at(entry).base / 4u + d * n8; // (a copy's words: a multiple of 4)
      let hrow = tk * (p.inter / 4u);
      var s = 0.0;
      for (var j = lane; j < n8; j += lanes) {
        let ww = down8[wrow + j];
        s += dot(vec4<f32>(bf16_lo(ww.x), bf16_hi(ww.x), bf16_lo(ww.y), bf16_hi(ww.y)), h4[hrow + 2u * j]);
        s += dot(vec4<f32>(bf16_lo(ww.z), bf16_hi(ww.z), bf16_lo(ww.w), bf16_hi(ww.w)), h4[hrow + 2u * j + 1u]);
      }
      acc += topk_w[tk] * s;
    }
  }
  wg_sum_runs(tid, lanes, acc);
  if (lane == 0u && d < p.dim) { y[t * p.dim + d] += wg_f32[tid]; }
}

// Group gi (row · groups + g) of the int4 copy of down from word `base` against its inputs x.
fn down_group(base: u32, gi: u32, x: Group32) -> f32 {
  let at = int4_regions(base, p.dim * p.inter);
  let d = int4_group(down8[base / 4u + gi], x); // a group is four words
  let sw = at.x + gi / 2u;
  let mw = at.y + gi / 2u;
  return half_of(down8[sw / 4u][sw % 4u], gi) * d.x + half_of(down8[mw / 4u][mw % 4u], gi) * d.y;
}

// The int4 fast path of `down_sum` (every copy int4, dim and inter multiples of 32, every copy's words a
// multiple of 4): y[t, d…d+3] += Σ_k w[t, k] · (h[t·K + k] · down_s[d]), one workgroup per t and four of
// d. Thread j takes the (k, group of 32 columns) pairs j, j + WG, …: it loads the group's 32 of h once, then for
// each of the four rows the group's 32 codes as one vec4<u32>, with their scale and minimum.
@compute @workgroup_size(WG)
fn down_sum_int4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin % step.t;
  let d0 = 4u * (lin / step.t);
  if (d0 >= p.dim) { return; } // (a 2D grid's last workgroups are past the end)
  let groups = p.inter / GROUP;
  let r = (vec4<u32>(d0) + vec4<u32>(0u, 1u, 2u, 3u)) * groups; // (dim is a multiple of 32: all four exist)
  var acc = vec4<f32>(0.0);
  for (var j = tid; j < p.top_k * groups; j += WG) {
    let tk = t * p.top_k + j / groups;
    let g = j % groups;
    let entry = entry_of(tk);
    if (entry < 0) { continue; }
    let base = copy_at(entry).base;
    let a = tk * (p.inter / 4u) + 8u * g;
    let x = Group32(h4[a], h4[a + 1u], h4[a + 2u], h4[a + 3u], h4[a + 4u], h4[a + 5u], h4[a + 6u], h4[a + 7u]);
    acc += topk_w[tk] * vec4<f32>(down_group(base, r.x + g, x), down_group(base, r.y + g, x),
      down_group(base, r.z + g, x), down_group(base, r.w + g, x));
  }
  let sum = wg_sum4(tid, acc);
  if (tid == 0u) {
    for (var q = 0u; q < 4u; q++) { y[t * p.dim + d0 + q] += sum[q]; }
  }
}
