// Switch Transformers' experts (T5 DenseReluDense): h[tk] = relu(x[t] · wiᵀ), read from GPU expert
// slots through the slot table; the down projection and weighted sum are experts.wgsl's `down_sum`.
//   x: [T, D] normalised hidden   topk_ids: [T, K]   slots: [moe_layers, E] i32
//   wi: [n_slots, I, D] bf16   h: [T·K, I] f32
// torch: hidden_states = self.wo(self.act(self.wi(hidden_states))), times the router probability
override WG: u32 = 64u;

struct Params { dim: u32, inter: u32, top_k: u32, experts: u32, layer: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> topk_ids: array<u32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> wi: array<u32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

var<workgroup> red: array<f32, WG>;

// h[tk, i] = relu(x[t] · wi_s[i]), one workgroup per (tk, i).
@compute @workgroup_size(WG)
fn wi_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let i = lin % p.inter;
  let tk = lin / p.inter;
  if (tk >= step.t * p.top_k) { return; }
  let t = tk / p.top_k;
  let slot = slots[p.layer * p.experts + topk_ids[tk]];
  let half_d = p.dim / 2u;
  var acc = 0.0;
  if (slot >= 0) {
    let row = (u32(slot) * p.inter + i) * half_d;
    for (var j = tid; j < half_d; j += WG) {
      let w = wi[row + j];
      acc += bf16_lo(w) * x[t * p.dim + 2u * j] + bf16_hi(w) * x[t * p.dim + 2u * j + 1u];
    }
  }
  red[tid] = acc;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red[tid] += red[tid + s]; }
    workgroupBarrier();
  }
  if (tid == 0u) { h[tk * p.inter + i] = max(red[0], 0.0); }
}
