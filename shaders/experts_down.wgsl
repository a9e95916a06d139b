// Experts, second half: the down projection of each routed expert's h, weighted by the router and
// summed into the residual (`down_sum`; `down_sum_bias` adds each copy's bias, gpt-oss), read through
// the slot table in each tier's format.
//   h: [T·K, I] f32 (experts.wgsl)   down: [D, I] per copy (+ [D] bf16 bias)   topk_w: [T, K]
//   y: [T, D] residual
// torch: current_hidden_states = nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])
//        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
//   gpt-oss: out = gated_output @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
//            weighted_output = out * routing_weights[token_idx, expert_idx, None]
override WG: u32 = 64u;

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

// Thread tid's share of Σ_k w[t, k] · (h[t·K + k] · down_s[d] + b_s[d]): its words of each row, and the
// bias (when `bias`, a constant at each call) once, in thread 0's share.
fn down_share(t: u32, d: u32, tid: u32, bias: bool) -> f32 {
  var acc = 0.0;
  for (var k = 0u; k < p.top_k; k++) {
    let tk = t * p.top_k + k;
    let entry = entry_of(tk);
    if (entry < 0) { continue; }
    var v = copy_dot(DOWN, entry, p.dim, p.inter, d, tk * p.inter, tid);
    if (bias && tid == 0u) { v += copy_bias(DOWN, entry, p.dim, p.inter, d); }
    acc += topk_w[tk] * v;
  }
  return acc;
}

// y[t, d] += Σ_k w[t, k] · (h[t·K + k] · down_s[d]), one workgroup per (t, d).
@compute @workgroup_size(WG)
fn down_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let d = lin % p.dim;
  let t = lin / p.dim;
  if (t >= step.t) { return; }
  let sum = wg_sum2(tid, vec2<f32>(down_share(t, d, tid, false), 0.0));
  if (tid == 0u) { y[t * p.dim + d] += sum.x; }
}

// y[t, d] += Σ_k w[t, k] · (h[t·K + k] · down_s[d] + b_s[d]) (gpt-oss), one workgroup per (t, d).
@compute @workgroup_size(WG)
fn down_sum_bias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let d = lin % p.dim;
  let t = lin / p.dim;
  if (t >= step.t) { return; }
  let sum = wg_sum2(tid, vec2<f32>(down_share(t, d, tid, true), 0.0));
  if (tid == 0u) { y[t * p.dim + d] += sum.x; }
}
