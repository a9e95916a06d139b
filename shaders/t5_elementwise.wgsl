// Small element-wise ops of Switch Transformers: the dense MLP's ReLU, the tied head's d_model^-0.5
// scale, and expert capacity.
override WG: u32 = 64u;

struct Params { n: u32, top_k: u32, experts: u32, layer: u32, capacity: u32, scale: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;

// a[t, i] = relu(a[t, i]) over [T, n]      torch: hidden_states = self.act(self.wi(hidden_states))
@compute @workgroup_size(WG)
fn relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= step.t * p.n) { return; }
  a[i] = max(a[i], 0.0);
}

// a[r, i] *= scale over the logits rows [head_rows, n]
// torch (tied embeddings): sequence_output = sequence_output * (self.model_dim**-0.5)
@compute @workgroup_size(WG)
fn scale_head(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= step.head_rows * p.n) { return; }
  a[i] = a[i] * p.scale;
}

// Expert capacity, one thread per expert of this MoE layer: the tokens routed to expert e, in order and
// counted from the start of the stack's pass (`counts`, cleared by the host), beyond `capacity` get
// weight 0 (a = topk_w), so the block adds nothing for them (transformers 4.x: token_priority =
// cumsum(one_hot(expert_index), dim=seq); expert_index *= token_priority <= expert_capacity).
@group(0) @binding(3) var<storage, read> topk_ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;

@compute @workgroup_size(WG)
fn capacity(@builtin(global_invocation_id) gid: vec3<u32>) {
  let e = gid.x;
  if (e >= p.experts) { return; }
  var c = counts[p.layer * p.experts + e];
  for (var t = 0u; t < step.t; t++) {
    for (var k = 0u; k < p.top_k; k++) {
      let i = t * p.top_k + k;
      if (topk_ids[i] == e) {
        c += 1u;
        if (c > p.capacity) { a[i] = 0.0; }
      }
    }
  }
  counts[p.layer * p.experts + e] = c;
}
