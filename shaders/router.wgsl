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
const MAX_E: u32 = 256u;

struct Params {
  experts: u32,
  top_k: u32,
  norm_topk: u32,
  masked: u32,
  layer: u32,   // MoE layer index into the slot table and the statistics
  dim: u32,
  rows_cap: u32,  // rows per layer region of utopk_ids / utopk_p / xnorm
  n_layers: u32,  // MoE layers (the statistics pass covers them all)
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> topk_ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> topk_w: array<f32>;
@group(0) @binding(7) var<storage, read_write> utopk_ids: array<u32>;
@group(0) @binding(8) var<storage, read_write> utopk_p: array<f32>;
@group(0) @binding(9) var<storage, read_write> xnorm: array<f32>;

var<workgroup> lg: array<f32, MAX_E>;       // this token's router logits
var<workgroup> ok: array<u32, MAX_E>;       // 1 where the expert may be chosen in this round
var<workgroup> red_v: array<f32, WG>;
var<workgroup> chosen: array<u32, MAX_K>;
var<workgroup> chosen_p: array<f32, MAX_K>;
var<workgroup> rank_of: array<u32, MAX_E>; // each expert's rank this round (NO_RANK: not allowed)
const NO_RANK: u32 = 0xffffffffu;

fn reduce_max(tid: u32, v: f32) -> f32 {
  workgroupBarrier();
  red_v[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red_v[tid] = max(red_v[tid], red_v[tid + s]); }
    workgroupBarrier();
  }
  return red_v[0];
}

fn reduce_sum(tid: u32, v: f32) -> f32 {
  workgroupBarrier();
  red_v[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) { red_v[tid] += red_v[tid + s]; }
    workgroupBarrier();
  }
  return red_v[0];
}

// Top-k among allowed experts of this token into chosen / chosen_p (softmax over allowed ones), by
// rank: an allowed expert's rank is the number of allowed experts before it in the order (larger
// logit first, lower index among equals), and the expert of rank k < top_k is choice k. Each thread
// ranks its experts against all E (into rank_of), then thread k fills choice k from the ranks: one
// pass and two barriers instead of top_k workgroup argmax reductions. Every workgroup location has
// one writer per phase (Mesa's GL compute lost a choice when a rank's writer and the slot's
// initialiser were different threads); unfilled choices (fewer allowed experts than top_k) stay empty.
fn route(tid: u32, use_mask: bool) {
  for (var e = tid; e < p.experts; e += WG) {
    ok[e] = select(1u, 0u, use_mask && slots[p.layer * p.experts + e] < 0);
  }
  workgroupBarrier();
  var m = NEG_INF;
  for (var e = tid; e < p.experts; e += WG) { if (ok[e] == 1u) { m = max(m, lg[e]); } }
  m = reduce_max(tid, m);
  var s = 0.0;
  for (var e = tid; e < p.experts; e += WG) { if (ok[e] == 1u) { s += exp(lg[e] - m); } }
  s = reduce_sum(tid, s);
  for (var e = tid; e < p.experts; e += WG) {
    var rank = NO_RANK;
    if (ok[e] == 1u) {
      let v = lg[e];
      rank = 0u;
      for (var f = 0u; f < p.experts; f++) {
        if (ok[f] == 1u && (lg[f] > v || (lg[f] == v && f < e))) { rank++; }
      }
    }
    rank_of[e] = rank;
  }
  workgroupBarrier();
  for (var k = tid; k < p.top_k; k += WG) {
    var pick = NO_RANK;
    var prob = 0.0;
    for (var e = 0u; e < p.experts; e++) {
      if (rank_of[e] == k) {
        pick = e;
        prob = exp(lg[e] - m) / s;
      }
    }
    chosen[k] = pick;
    chosen_p[k] = prob;
  }
  workgroupBarrier();
}

// One workgroup per token.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let t = linear_wg(wg, nwg);
  if (t >= step.t) { return; }
  for (var e = tid; e < p.experts; e += WG) { lg[e] = logits[t * p.experts + e]; }
  route(tid, p.masked == 1u);
  if (tid == 0u) {
    var total = 0.0;
    for (var k = 0u; k < p.top_k; k++) { total += chosen_p[k]; }
    for (var k = 0u; k < p.top_k; k++) {
      topk_ids[t * p.top_k + k] = chosen[k];
      topk_w[t * p.top_k + k] = select(chosen_p[k], chosen_p[k] / total, p.norm_topk == 1u);
    }
  }
  workgroupBarrier();
  route(tid, false);
  let region = p.layer * p.rows_cap;
  if (tid == 0u) {
    for (var k = 0u; k < p.top_k; k++) {
      utopk_ids[(region + t) * p.top_k + k] = chosen[k];
      utopk_p[(region + t) * p.top_k + k] = chosen_p[k];
    }
  }
  var ss = 0.0;
  for (var d = tid; d < p.dim; d += WG) { let v = x[t * p.dim + d]; ss += v * v; }
  ss = reduce_sum(tid, ss);
  if (tid == 0u) { xnorm[region + t] = sqrt(ss); }
}

// Statistics of a call, once after its routers ran: one thread per (MoE layer, expert) over the
// MoE layers p.layer … p.layer + n_layers − 1 (all of them for a causal model; one stack, encoder or
// decoder, for Switch, whose other stack's regions hold another call's choices), no atomics needed:
//   stats: [moe_layers, E, 4] f32 — (times chosen by the unmasked router, Σ ‖x‖·G(x)_e, hits, high hits)
//   a hit is an unmasked choice whose expert has a resident copy; a high hit, one at the high tier.
@group(0) @binding(10) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>) {
  // a call over rows counted before (a KV cache rebuilt after its sequence gave up its slot) adds nothing
  if (gid.x >= p.n_layers * p.experts || step.count_stats == 0u) { return; }
  let layer = p.layer + gid.x / p.experts;
  let e = gid.x % p.experts;
  let le = layer * p.experts + e;
  let region = layer * p.rows_cap;
  var used = 0.0;
  var imp = 0.0;
  for (var t = 0u; t < step.t; t++) {
    for (var k = 0u; k < p.top_k; k++) {
      if (utopk_ids[(region + t) * p.top_k + k] == e) {
        used += 1.0;
        imp += xnorm[region + t] * utopk_p[(region + t) * p.top_k + k];
      }
    }
  }
  let o = le * 4u;
  stats[o] += used;
  stats[o + 1u] += imp;
  // a hit: the expert has a resident copy; at the high tier (bits 28…30 of the entry 0: experts.wgsl)
  let entry = slots[le];
  if (entry >= 0) {
    stats[o + 2u] += used;
    if ((u32(entry) >> 28u) == 0u) { stats[o + 3u] += used; }
  }
}
