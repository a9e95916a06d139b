// Experts reading their weights from GPU expert slots through the slot table, first half: SwiGLU
// (`gate_up`, the causal families), ReLU (`wi_relu`, Switch Transformers' DenseReluDense, whose wi
// sits in `gate`) or gpt-oss's clamped SwiGLU (`gate_up_oss`, whose fused gate_up [2I, D] with its
// bias sits in `gate`). The down projection is experts_down.wgsl (a module per half keeps each
// entry's bindings within the device's storage-buffer limit).
//   x: [T, D] normalised hidden   topk_ids: [T, K]   h: [T·K, I] f32, written
//   slots: [moe_layers, E] i32: −1 when no copy of the expert is resident, else the copy to use: its
//          tier in bits 28…30 (0 the high tier, 1 the low tier) and its slot in bits 0…27
//   gate, up: [I, D] matrices, down: [D, I], one buffer each per layer: the high tier's slots from
//          word 0 (hi_words apiece), then the low tier's from word lo_base (lo_words apiece), each
//          matrix in its tier's format (src/quant/formats.ts): bf16 as stored; int8 and int4 codes,
//          then an f16 scale per 32 weights of a row (int4: then an f16 minimum per 32); mxfp4 e2m1
//          codes, then a u8 exponent per 32; gpt-oss's gate_up [2I, D] and down then a bf16 bias per row
// torch: current_hidden_states = self.act_fn(gate) * up
//   Switch: hidden_states = self.act(self.wi(hidden_states))
//   gpt-oss: gate_up = current_state @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
//            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
override WG: u32 = 64u;

//!include expert_formats.wgsl
//!include reduce.wgsl

@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<u32>;
@group(0) @binding(6) var<storage, read> up: array<u32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

const GATE: u32 = 0u;
const UP: u32 = 1u;

fn weight(m: u32, i: u32) -> u32 {
  if (m == GATE) { return gate[i]; }
  return up[i];
}

fn input(m: u32, i: u32) -> f32 {
  return x[i];
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
  let entry = entry_of(tk);
  var acc = vec2<f32>(0.0, 0.0);
  if (entry >= 0) {
    acc = vec2<f32>(copy_dot(GATE, entry, p.inter, p.dim, i, t * p.dim, tid),
      copy_dot(UP, entry, p.inter, p.dim, i, t * p.dim, tid));
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
  let entry = entry_of(tk);
  var acc = 0.0;
  if (entry >= 0) { acc = copy_dot(GATE, entry, p.inter, p.dim, i, t * p.dim, tid); }
  let sum = wg_sum2(tid, vec2<f32>(acc, 0.0));
  if (tid == 0u) { h[tk * p.inter + i] = max(sum.x, 0.0); }
}

// σ(z) without overflow: exp of a non-positive argument only.
fn sigmoid(z: f32) -> f32 {
  let e = exp(-abs(z));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

// gpt-oss: h[tk, i] = (clamp(up, −limit, limit) + 1) · g · σ(alpha · g), g = min(gate, limit), where
// gate = x[t] · W[2i] + b[2i] and up = x[t] · W[2i + 1] + b[2i + 1] of the fused gate_up W [2I, D] and
// its bias b [2I] (rows interleaved); one workgroup per (tk, i).
// torch: gate = gate.clamp(min=None, max=self.limit); up = up.clamp(min=-self.limit, max=self.limit)
//        glu = gate * torch.sigmoid(gate * self.alpha); gated_output = (up + 1) * glu
@compute @workgroup_size(WG)
fn gate_up_oss(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let i = lin % p.inter;
  let tk = lin / p.inter;
  if (tk >= step.t * p.top_k) { return; }
  let t = tk / p.top_k;
  let entry = entry_of(tk);
  let rows = 2u * p.inter;
  var acc = vec2<f32>(0.0, 0.0);
  if (entry >= 0) {
    acc = vec2<f32>(copy_dot(GATE, entry, rows, p.dim, 2u * i, t * p.dim, tid),
      copy_dot(GATE, entry, rows, p.dim, 2u * i + 1u, t * p.dim, tid));
  }
  let sum = wg_sum2(tid, acc);
  if (tid != 0u) { return; }
  var out = 0.0;
  if (entry >= 0) {
    let g = min(sum.x + copy_bias(GATE, entry, rows, p.dim, 2u * i), p.swiglu_limit);
    let u = clamp(sum.y + copy_bias(GATE, entry, rows, p.dim, 2u * i + 1u), -p.swiglu_limit, p.swiglu_limit);
    out = (u + 1.0) * g * sigmoid(p.swiglu_alpha * g);
  }
  h[tk * p.inter + i] = out;
}
