// Causal attention with grouped KV heads over the KV cache, split over keys (flash decoding):
// `partial` — one workgroup per (token t, head h, split s) — runs an online softmax over the keys
// [s·split_keys, (s+1)·split_keys) that query t may see and writes (m, l, acc[hd]); `combine` — one
// workgroup per (t, h) — merges the splits. Splitting gives a decode step (T = 1) H × splits
// workgroups instead of H, and bounds each workgroup's serial work.
// torch (eager): softmax(q @ k.T * scaling + causal_mask, dtype=float32) @ v
//   q: [T, H, hd]  cache: [ctx, Hkv, hd]  out: [T, H, hd]; query t sits at position pos0 + t.
//   partials: [T, H, MAX_SPLITS, hd + 2] f32 (acc[hd], m, l)
// With sinks (gpt-oss), one learned logit per head joins the softmax's denominator only:
// torch: combined_logits = torch.cat([attn_weights, sinks], dim=-1)
//        probs = F.softmax(combined_logits, dim=-1); scores = probs[..., :-1]  # we drop the sink here
//   sinks: [H] bf16, read only when has_sinks is 1 (bound to any buffer otherwise).
override WG: u32 = 64u;
override MAX_SPLITS: u32 = 16u;
const MAX_HEAD_DIM: u32 = 256u;

struct Params { n_heads: u32, n_kv: u32, head_dim: u32, window: u32, scale: f32, has_sinks: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kcache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> vcache: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> sinks: array<u32>;

var<workgroup> qs: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
var<workgroup> acc: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
//!include reduce.wgsl

fn part_base(t: u32, h: u32, s: u32) -> u32 {
  return ((t * p.n_heads + h) * MAX_SPLITS + s) * (p.head_dim + 2u);
}

@compute @workgroup_size(WG)
fn partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let splits = (step.pos0 + step.t + step.split_keys - 1u) / step.split_keys;
  let s = lin % splits;
  let h = (lin / splits) % p.n_heads;
  let t = lin / (splits * p.n_heads);
  if (t >= step.t) { return; }
  let hd = p.head_dim;
  let hd4 = hd / 4u;
  let kvh = h / (p.n_heads / p.n_kv);
  let n_keys = step.pos0 + t + 1u;
  var first = 0u;
  if (p.window > 0u && n_keys > p.window) { first = n_keys - p.window; }
  let lo = max(first, s * step.split_keys);
  let hi = min(n_keys, (s + 1u) * step.split_keys);
  let qbase = (t * p.n_heads + h) * hd4;
  for (var d = tid; d < hd4; d += WG) { qs[d] = q[qbase + d]; }
  for (var d = tid; d < hd; d += WG) { acc[d] = 0.0; }
  workgroupBarrier();
  var m = NEG_INF;
  var l = 0.0;
  for (var c0 = lo; c0 < hi; c0 += WG) {
    let j = c0 + tid;
    var sc = NEG_INF;
    if (j < hi) {
      let kb = (j * p.n_kv + kvh) * hd4;
      var dot = vec4<f32>(0.0);
      for (var d = 0u; d < hd4; d++) { dot += qs[d] * kcache[kb + d]; }
      sc = (dot.x + dot.y + dot.z + dot.w) * p.scale;
    }
    let m_new = max(m, wg_max(tid, sc));
    let alpha = exp(m - m_new);
    var pj = 0.0;
    if (j < hi) { pj = exp(sc - m_new); }
    probs[tid] = pj;
    l = l * alpha + wg_sum(tid, pj);
    let n = min(WG, hi - c0);
    for (var d = tid; d < hd; d += WG) {
      var a = acc[d] * alpha;
      for (var i = 0u; i < n; i++) { a += probs[i] * vcache[((c0 + i) * p.n_kv + kvh) * hd + d]; }
      acc[d] = a;
    }
    m = m_new;
    workgroupBarrier();
  }
  let base = part_base(t, h, s);
  for (var d = tid; d < hd; d += WG) { partials[base + d] = acc[d]; }
  if (tid == 0u) {
    partials[base + hd] = m;
    partials[base + hd + 1u] = l;
  }
}

@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin / p.n_heads;
  let h = lin % p.n_heads;
  if (t >= step.t) { return; }
  let hd = p.head_dim;
  let splits = (step.pos0 + step.t + step.split_keys - 1u) / step.split_keys;
  var m = NEG_INF;
  for (var s = 0u; s < splits; s++) {
    let b = part_base(t, h, s);
    if (partials[b + hd + 1u] > 0.0) { m = max(m, partials[b + hd]); }
  }
  var sink = 0.0;
  if (p.has_sinks == 1u) {
    let sw = sinks[h / 2u];
    sink = select(bf16_lo(sw), bf16_hi(sw), (h & 1u) == 1u);
    m = max(m, sink);
  }
  var l = 0.0;
  for (var s = 0u; s < splits; s++) {
    let b = part_base(t, h, s);
    let ls = partials[b + hd + 1u];
    if (ls > 0.0) { l += ls * exp(partials[b + hd] - m); }
  }
  if (p.has_sinks == 1u) { l += exp(sink - m); }
  let obase = (t * p.n_heads + h) * hd;
  for (var d = tid; d < hd; d += WG) {
    var o = 0.0;
    for (var s = 0u; s < splits; s++) {
      let b = part_base(t, h, s);
      let ls = partials[b + hd + 1u];
      if (ls > 0.0) { o += partials[b + d] * exp(partials[b + hd] - m); }
    }
    out[obase + d] = o / l;
  }
}
