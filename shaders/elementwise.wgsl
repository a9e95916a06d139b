// Small element-wise ops of the dense MLP and Qwen2-MoE's shared expert.
override WG: u32 = 64u;

struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

// a[t, i] = silu(a[t, i]) * b[t, i] over [T, n]      torch: self.act_fn(self.gate_proj(x)) * self.up_proj(x)
@compute @workgroup_size(WG)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= step.t * p.n) { return; }
  let g = a[i];
  a[i] = g / (1.0 + exp(-g)) * b[i];
}

// a[t, i] += sigmoid(g[t]) * s[t, i] over [T, n], with b = s and g in `gate_logit`
// torch: shared_expert_output = F.sigmoid(self.shared_expert_gate(hidden_states)) * shared_expert_output
@group(0) @binding(4) var<storage, read> gate_logit: array<f32>;

@compute @workgroup_size(WG)
fn sigmoid_gated_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= step.t * p.n) { return; }
  let t = i / p.n;
  a[i] += b[i] / (1.0 + exp(-gate_logit[t]));
}
