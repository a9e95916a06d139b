// Router: softmax → top-k → optional renormalisation, with masked gating, plus the unmasked
// router's choices for the statistics that drive SwapMoE.
//   logits: [T, E] f32   slots: [moe_layers, E] i32 (slot or -1)   x: [T, D] the router's input
//   topk_ids: [T, K] u32  topk_w: [T, K] f32   (masked: what the experts kernels use)
//   utopk_ids: [T, K] u32 utopk_p: [T, K] f32  (unmasked choices and their probabilities)
//   xnorm: [T] f32 ‖x‖
// torch: routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
//        routing_weights, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
//        if norm_topk_prob: routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
// Masked gating (the reference fixtures' rule): logits of experts that are not allowed are -inf
// before softmax and top-k. An expert is allowed when its slot is >= 0 (or always, when `masked` is 0).
override WG: u32 = 64u;
const MAX_K: u32 = 16u;

struct Params {
  experts: u32,
  top_k: u32,
  norm_topk: u32,
  masked: u32,
  layer: u32,   // MoE layer index into the slot table and the statistics
  dim: u32,
  _p0: u32,
  _p1: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> topk_ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> topk_w: array<f32>;
@group(0) @binding(7) var<storage, read_write> utopk_ids: array<u32>;
@group(0) @binding(8) var<storage, read_write> utopk_p: array<f32>;
@group(0) @binding(9) var<storage, read_write> xnorm: array<f32>;

fn allowed(e: u32, use_mask: bool) -> bool {
  return !use_mask || slots[p.layer * p.experts + e] >= 0;
}

// Writes the top-k experts of row t (among allowed ones when use_mask) and returns nothing;
// probabilities are softmax over the allowed experts.
fn route(t: u32, use_mask: bool, out_ids: ptr<function, array<u32, MAX_K>>, out_p: ptr<function, array<f32, MAX_K>>) {
  let base = t * p.experts;
  var m = NEG_INF;
  for (var e = 0u; e < p.experts; e++) {
    if (allowed(e, use_mask)) { m = max(m, logits[base + e]); }
  }
  var s = 0.0;
  for (var e = 0u; e < p.experts; e++) {
    if (allowed(e, use_mask)) { s += exp(logits[base + e] - m); }
  }
  for (var k = 0u; k < p.top_k; k++) {
    var best = 0xffffffffu;
    var bv = NEG_INF;
    for (var e = 0u; e < p.experts; e++) {
      if (!allowed(e, use_mask)) { continue; }
      var taken = false;
      for (var j = 0u; j < k; j++) { if ((*out_ids)[j] == e) { taken = true; } }
      let v = logits[base + e];
      if (!taken && (best == 0xffffffffu || v > bv)) { best = e; bv = v; }
    }
    (*out_ids)[k] = best;
    (*out_p)[k] = select(0.0, exp(bv - m) / s, best != 0xffffffffu);
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  if (t >= step.t) { return; }
  var ids: array<u32, MAX_K>;
  var pr: array<f32, MAX_K>;
  route(t, p.masked == 1u, &ids, &pr);
  var total = 0.0;
  for (var k = 0u; k < p.top_k; k++) { total += pr[k]; }
  for (var k = 0u; k < p.top_k; k++) {
    topk_ids[t * p.top_k + k] = ids[k];
    topk_w[t * p.top_k + k] = select(pr[k], pr[k] / total, p.norm_topk == 1u);
  }
  var uids: array<u32, MAX_K>;
  var upr: array<f32, MAX_K>;
  route(t, false, &uids, &upr);
  for (var k = 0u; k < p.top_k; k++) {
    utopk_ids[t * p.top_k + k] = uids[k];
    utopk_p[t * p.top_k + k] = upr[k];
  }
  var ss = 0.0;
  for (var d = 0u; d < p.dim; d++) { let v = x[t * p.dim + d]; ss += v * v; }
  xnorm[t] = sqrt(ss);
}

// Statistics, one thread per expert of this layer (no atomics needed):
//   stats: [moe_layers, E, 4] f32 — (times chosen by the unmasked router, Σ ‖x‖·G(x)_e, hits, 0)
//   a hit is an unmasked choice whose expert is resident.
@group(0) @binding(10) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>) {
  let e = gid.x;
  if (e >= p.experts) { return; }
  var used = 0.0;
  var imp = 0.0;
  for (var t = 0u; t < step.t; t++) {
    for (var k = 0u; k < p.top_k; k++) {
      if (utopk_ids[t * p.top_k + k] == e) {
        used += 1.0;
        imp += xnorm[t] * utopk_p[t * p.top_k + k];
      }
    }
  }
  let o = (p.layer * p.experts + e) * 4u;
  stats[o] += used;
  stats[o + 1u] += imp;
  if (slots[p.layer * p.experts + e] >= 0) { stats[o + 2u] += used; }
}
