// Experts reading their weights from GPU expert slots through the slot table: SwiGLU (`gate_up`, the
// causal families) or ReLU (`wi_relu`, Switch Transformers' DenseReluDense, whose wi sits in `gate`),
// then the down projection, weighted by the router and summed into the residual (`down_sum`).
//   x: [T, D] normalised hidden   topk_ids / topk_w: [T, K]   slots: [moe_layers, E] i32
//   gate, up: [n_slots, I, D] bf16   down: [n_slots, D, I] bf16   h: [T·K, I] f32   y: [T, D] residual
// torch: current_hidden_states = self.act_fn(gate) * up
//        current_hidden_states = nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])
//        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
//   Switch: hidden_states = self.wo(self.act(self.wi(hidden_states))), times the router probability
override WG: u32 = 64u;

struct Params { dim: u32, inter: u32, top_k: u32, experts: u32, layer: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> topk_ids: array<u32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<u32>;
@group(0) @binding(6) var<storage, read> up: array<u32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;
@group(0) @binding(8) var<storage, read> topk_w: array<f32>;
@group(0) @binding(9) var<storage, read> down: array<u32>;
@group(0) @binding(10) var<storage, read_write> y: array<f32>;

//!include reduce.wgsl

fn slot_of(tk: u32) -> i32 {
  return slots[p.layer * p.experts + topk_ids[tk]];
}


// h[tk, i] = silu(x[t] · gate_s[i]) * (x[t] · up_s[i]), one workgroup per (tk, i).
@compute @workgroup_size(WG)
fn gate_up(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let i = lin % p.inter;
  let tk = lin / p.inter;
  if (tk >= step.t * p.top_k) { return; }
  let t = tk / p.top_k;
  let slot = slot_of(tk);
  let half_d = p.dim / 2u;
  var acc = vec2<f32>(0.0, 0.0);
  if (slot >= 0) {
    let row = (u32(slot) * p.inter + i) * half_d;
    for (var j = tid; j < half_d; j += WG) {
      let x0 = x[t * p.dim + 2u * j];
      let x1 = x[t * p.dim + 2u * j + 1u];
      let g = gate[row + j];
      let u = up[row + j];
      acc += vec2<f32>(bf16_lo(g) * x0 + bf16_hi(g) * x1, bf16_lo(u) * x0 + bf16_hi(u) * x1);
    }
  }
  let sum = wg_sum2(tid, acc);
  if (tid == 0u) { h[tk * p.inter + i] = sum.x / (1.0 + exp(-sum.x)) * sum.y; }
}

// h[tk, i] = relu(x[t] · gate_s[i]) (Switch's wi), one workgroup per (tk, i).
@compute @workgroup_size(WG)
fn wi_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let i = lin % p.inter;
  let tk = lin / p.inter;
  if (tk >= step.t * p.top_k) { return; }
  let t = tk / p.top_k;
  let slot = slot_of(tk);
  let half_d = p.dim / 2u;
  var acc = 0.0;
  if (slot >= 0) {
    let row = (u32(slot) * p.inter + i) * half_d;
    for (var j = tid; j < half_d; j += WG) {
      let w = gate[row + j];
      acc += bf16_lo(w) * x[t * p.dim + 2u * j] + bf16_hi(w) * x[t * p.dim + 2u * j + 1u];
    }
  }
  let sum = wg_sum2(tid, vec2<f32>(acc, 0.0));
  if (tid == 0u) { h[tk * p.inter + i] = max(sum.x, 0.0); }
}

// y[t, d] += Σ_k w[t, k] · (h[t·K + k] · down_s[d]), one workgroup per (t, d).
@compute @workgroup_size(WG)
fn down_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let d = lin % p.dim;
  let t = lin / p.dim;
  if (t >= step.t) { return; }
  let half_i = p.inter / 2u;
  var acc = 0.0;
  for (var k = 0u; k < p.top_k; k++) {
    let tk = t * p.top_k + k;
    let slot = slot_of(tk);
    if (slot < 0) { continue; }
    let row = (u32(slot) * p.dim + d) * half_i;
    var part = 0.0;
    for (var j = tid; j < half_i; j += WG) {
      let wv = down[row + j];
      part += bf16_lo(wv) * h[tk * p.inter + 2u * j] + bf16_hi(wv) * h[tk * p.inter + 2u * j + 1u];
    }
    acc += topk_w[tk] * part;
  }
  let sum = wg_sum2(tid, vec2<f32>(acc, 0.0));
  if (tid == 0u) { y[t * p.dim + d] += sum.x; }
}
