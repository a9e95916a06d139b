// Causal attention with grouped KV heads over the KV cache, split over keys (flash decoding):
// `partial` — one workgroup per (token t, head h, split s) — runs an online softmax over the keys
// [s·split_keys, (s+1)·split_keys) that query t may see and writes (m, l, acc[hd]); `combine` — one
// workgroup per (t, h) — merges the splits. Splitting gives a decode step (T = 1) H × splits
// workgroups instead of H, and bounds each workgroup's serial work.
// Each row reads its own `Row` (common.wgsl): query t sits at position rows[t].pos of the sequence in
// slot rows[t].slot, whose keys are that slot's region of the cache, split rows[t].split_keys at a
// time; so rows of different sequences share a call, each computing exactly what it would alone.
// torch (eager): softmax(q @ k.T * scaling + causal_mask, dtype=float32) @ v
//   q: [T, H, hd]  cache: [slots, ctx, Hkv, hd]  out: [T, H, hd]
//   partials: [T, H, MAX_SPLITS, hd + 2] f32 (acc[hd], m, l)
// With sinks (gpt-oss), one learned logit per head joins the softmax's denominator only:
// torch: combined_logits = torch.cat([attn_weights, sinks], dim=-1)
//        probs = F.softmax(combined_logits, dim=-1); scores = probs[..., :-1]  # we drop the sink here
//   sinks: [H] bf16, read only when has_sinks is 1 (bound to any buffer otherwise).
override WG: u32 = 64u;
override MAX_SPLITS: u32 = 16u;
// head_dim / 4, fixed per model: the loops over a head's vec4s unroll, so their loads are in flight at once
override HD4: u32 = 32u;
const MAX_HEAD_DIM: u32 = 256u;

struct Params { n_heads: u32, n_kv: u32, head_dim: u32, window: u32, scale: f32, has_sinks: u32, ctx: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kcache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> vcache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> sinks: array<u32>;
@group(0) @binding(8) var<storage, read> rows: array<Row>;

var<workgroup> qs: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> accv: array<vec4<f32>, WG>;
//!include reduce.wgsl

fn part_base(t: u32, h: u32, s: u32) -> u32 {
  return ((t * p.n_heads + h) * MAX_SPLITS + s) * (p.head_dim + 2u);
}

@compute @workgroup_size(WG)
fn partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let s = lin % step.splits;
  let h = (lin / step.splits) % p.n_heads;
  let t = lin / (step.splits * p.n_heads);
  if (t >= step.t) { return; }
  let row = rows[t];
  let n_keys = row.pos + 1u;
  if (s * row.split_keys >= n_keys) { return; } // past this row's splits (another row's are longer)
  let hd = p.head_dim;
  let hd4 = hd / 4u;
  let kvh = h / (p.n_heads / p.n_kv);
  let region = row.slot * p.ctx; // the sequence's first row of the cache
  var first = 0u;
  if (p.window > 0u && n_keys > p.window) { first = n_keys - p.window; }
  let lo = max(first, s * row.split_keys);
  let hi = min(n_keys, (s + 1u) * row.split_keys);
  let qbase = (t * p.n_heads + h) * hd4;
  for (var d = tid; d < hd4; d += WG) { qs[d] = q[qbase + d]; }
  workgroupBarrier();
  // scores: a thread per key of the chunk; values: thread (lane, grp) sums vec4 `lane` of the values of
  // the chunk's keys grp, grp + G, … (G groups of HD4 lanes), four keys in flight at a time
  let lane = tid % HD4;
  let grp = tid / HD4;
  let G = WG / HD4;
  var a4 = vec4<f32>(0.0);
  var m = NEG_INF;
  var l = 0.0;
  for (var c0 = lo; c0 < hi; c0 += WG) {
    let j = c0 + tid;
    var sc = NEG_INF;
    if (j < hi) {
      let kb = ((region + j) * p.n_kv + kvh) * HD4;
      var dot = vec4<f32>(0.0);
      for (var d = 0u; d < HD4; d++) { dot += qs[d] * kcache[kb + d]; }
      sc = (dot.x + dot.y + dot.z + dot.w) * p.scale;
    }
    let m_new = max(m, wg_max(tid, sc));
    let alpha = exp(m - m_new);
    var pj = 0.0;
    if (j < hi) { pj = exp(sc - m_new); }
    probs[tid] = pj;
    l = l * alpha + wg_sum(tid, pj);
    let n = min(WG, hi - c0);
    if (grp < G) {
      let vb = ((region + c0) * p.n_kv + kvh) * HD4 + lane;
      let stride = p.n_kv * HD4;
      var s0 = vec4<f32>(0.0);
      var s1 = vec4<f32>(0.0);
      var s2 = vec4<f32>(0.0);
      var s3 = vec4<f32>(0.0);
      var i = grp;
      for (; i + 3u * G < n; i += 4u * G) {
        s0 += probs[i] * vcache[vb + i * stride];
        s1 += probs[i + G] * vcache[vb + (i + G) * stride];
        s2 += probs[i + 2u * G] * vcache[vb + (i + 2u * G) * stride];
        s3 += probs[i + 3u * G] * vcache[vb + (i + 3u * G) * stride];
      }
      for (; i < n; i += G) { s0 += probs[i] * vcache[vb + i * stride]; }
      a4 = a4 * alpha + ((s0 + s1) + (s2 + s3));
    }
    m = m_new;
    workgroupBarrier();
  }
  // the groups' sums of each lane, added
  accv[tid] = a4;
  workgroupBarrier();
  let base = part_base(t, h, s);
  if (grp == 0u) {
    var sum = accv[lane];
    for (var g = 1u; g < G; g++) { sum += accv[g * HD4 + lane]; }
    partials[base + 4u * lane] = sum.x;
    partials[base + 4u * lane + 1u] = sum.y;
    partials[base + 4u * lane + 2u] = sum.z;
    partials[base + 4u * lane + 3u] = sum.w;
  }
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
  let row = rows[t];
  let splits = (row.pos + row.split_keys) / row.split_keys; // this row's: ceil((pos + 1) / split_keys)
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
