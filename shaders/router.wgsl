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
var<workgroup> ok: array<u32, MAX_E>;       // 1 where the masked routing may choose the expert
var<workgroup> red2: array<vec2<f32>, WG>;  // reductions of (all experts, allowed experts) at once
var<workgroup> chosen: array<u32, MAX_K>;   // the masked routing's choices and probabilities
var<workgroup> chosen_p: array<f32, MAX_K>;
var<workgroup> uchosen: array<u32, MAX_K>;  // the unmasked router's
var<workgroup> uchosen_p: array<f32, MAX_K>;
var<workgroup> rank_of: array<u32, MAX_E>;  // each expert's rank among all
var<workgroup> mrank_of: array<u32, MAX_E>; // among the allowed (NO_RANK: not allowed)
var<workgroup> red_v: array<f32, WG>;
const NO_RANK: u32 = 0xffffffffu;

fn reduce2(tid: u32, v: vec2<f32>, is_max: bool) -> vec2<f32> {
  workgroupBarrier();
  red2[tid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      if (is_max) { red2[tid] = max(red2[tid], red2[tid + s]); } else { red2[tid] += red2[tid + s]; }
    }
    workgroupBarrier();
  }
  return red2[0];
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

// Top-k of this token among all experts (into uchosen / uchosen_p) and among the allowed ones (into
// chosen / chosen_p), each with its softmax over the experts it ranks, in one pass: an expert's rank
// is the number of experts (allowed experts) before it in the order (larger logit first, lower index
// among equals), and the expert of rank k < top_k is choice k. Each thread ranks its experts against
// all E (into rank_of, mrank_of), then thread k fills choice k from the ranks: two reductions of
// pairs and two barriers instead of top_k workgroup argmax reductions per routing. Every workgroup
// location has one writer per phase (Mesa's GL compute lost a choice when a rank's writer and the
// slot's initialiser were different threads); unfilled choices (fewer allowed experts than top_k)
// stay empty.
fn route(tid: u32, use_mask: bool) {
  for (var e = tid; e < p.experts; e += WG) {
    ok[e] = select(1u, 0u, use_mask && slots[p.layer * p.experts + e] < 0);
  }
  workgroupBarrier();
  var m = vec2<f32>(NEG_INF);
  for (var e = tid; e < p.experts; e += WG) {
    m.x = max(m.x, lg[e]);
    if (ok[e] == 1u) { m.y = max(m.y, lg[e]); }
  }
  m = reduce2(tid, m, true);
  var s = vec2<f32>(0.0);
  for (var e = tid; e < p.experts; e += WG) {
    s.x += exp(lg[e] - m.x);
    if (ok[e] == 1u) { s.y += exp(lg[e] - m.y); }
  }
  s = reduce2(tid, s, false);
  for (var e = tid; e < p.experts; e += WG) {
    let v = lg[e];
    var rank = 0u;
    var mrank = 0u;
    for (var f = 0u; f < p.experts; f++) {
      if (lg[f] > v || (lg[f] == v && f < e)) {
        rank++;
        mrank += ok[f];
      }
    }
    rank_of[e] = rank;
    mrank_of[e] = select(NO_RANK, mrank, ok[e] == 1u);
  }
  workgroupBarrier();
  for (var k = tid; k < p.top_k; k += WG) {
    var pick = NO_RANK;
    var prob = 0.0;
    var upick = NO_RANK;
    var uprob = 0.0;
    for (var e = 0u; e < p.experts; e++) {
      if (mrank_of[e] == k) {
        pick = e;
        prob = exp(lg[e] - m.y) / s.y;
      }
      if (rank_of[e] == k) {
        upick = e;
        uprob = exp(lg[e] - m.x) / s.x;
      }
    }
    chosen[k] = pick;
    chosen_p[k] = prob;
    uchosen[k] = upick;
    uchosen_p[k] = uprob;
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
  // ‖x‖, four loads in flight a thread
  var ss = vec4<f32>(0.0);
  let base = t * p.dim;
  for (var d = tid; d < p.dim; d += 4u * WG) {
    var v = vec4<f32>(0.0);
    v.x = x[base + d];
    if (d + WG < p.dim) { v.y = x[base + d + WG]; }
    if (d + 2u * WG < p.dim) { v.z = x[base + d + 2u * WG]; }
    if (d + 3u * WG < p.dim) { v.w = x[base + d + 3u * WG]; }
    ss += v * v;
  }
  route(tid, p.masked == 1u); // (route() reads lg only after its first barrier)
  if (tid == 0u) {
    var total = 0.0;
    for (var k = 0u; k < p.top_k; k++) { total += chosen_p[k]; }
    for (var k = 0u; k < p.top_k; k++) {
      topk_ids[t * p.top_k + k] = chosen[k];
      topk_w[t * p.top_k + k] = select(chosen_p[k], chosen_p[k] / total, p.norm_topk == 1u);
    }
  }
  let region = p.layer * p.rows_cap;
  if (tid == 0u) {
    for (var k = 0u; k < p.top_k; k++) {
      utopk_ids[(region + t) * p.top_k + k] = uchosen[k];
      utopk_p[(region + t) * p.top_k + k] = uchosen_p[k];
    }
  }
  let norm2 = reduce_sum(tid, ss.x + ss.y + ss.z + ss.w);
  if (tid == 0u) { xnorm[region + t] = sqrt(norm2); }
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
