// Causal attention with grouped KV heads over the KV cache, one workgroup per (token t, head h),
// keys in chunks of WG with an online softmax (running max m, running sum l).
// torch (eager): softmax(q @ k.T * scaling + causal_mask, dtype=float32) @ v
//   q: [T, H, hd]  cache: [ctx, Hkv, hd]  out: [T, H, hd]; query t sits at position pos0 + t.
override WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;

struct Params { n_heads: u32, n_kv: u32, head_dim: u32, window: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kcache: array<f32>;
@group(0) @binding(4) var<storage, read> vcache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> acc: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> stats: vec2<f32>; // (m, alpha)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin / p.n_heads;
  let h = lin % p.n_heads;
  if (t >= step.t) { return; }
  let kvh = h / (p.n_heads / p.n_kv);
  let hd = p.head_dim;
  let pos = step.pos0 + t;
  let n_keys = pos + 1u;
  var start = 0u;
  if (p.window > 0u && n_keys > p.window) { start = n_keys - p.window; }
  let qbase = (t * p.n_heads + h) * hd;
  for (var d = tid; d < hd; d += WG) { qs[d] = q[qbase + d]; acc[d] = 0.0; }
  if (tid == 0u) { stats = vec2<f32>(NEG_INF, 0.0); }
  var l = 0.0; // running sum, kept identical in every thread
  workgroupBarrier();
  for (var c0 = start; c0 < n_keys; c0 += WG) {
    let j = c0 + tid;
    var s = NEG_INF;
    if (j < n_keys) {
      let kb = (j * p.n_kv + kvh) * hd;
      var dot = 0.0;
      for (var d = 0u; d < hd; d++) { dot += qs[d] * kcache[kb + d]; }
      s = dot * p.scale;
    }
    probs[tid] = s;
    workgroupBarrier();
    if (tid == 0u) {
      var cm = NEG_INF;
      for (var i = 0u; i < WG; i++) { cm = max(cm, probs[i]); }
      let m_new = max(stats.x, cm);
      stats = vec2<f32>(m_new, exp(stats.x - m_new));
    }
    workgroupBarrier();
    let m_new = stats.x;
    let alpha = stats.y;
    var pj = 0.0;
    if (j < n_keys) { pj = exp(s - m_new); }
    workgroupBarrier();
    probs[tid] = pj;
    workgroupBarrier();
    var csum = 0.0;
    let n = min(WG, n_keys - c0);
    for (var i = 0u; i < n; i++) { csum += probs[i]; }
    l = l * alpha + csum;
    for (var d = tid; d < hd; d += WG) {
      var a = acc[d] * alpha;
      for (var i = 0u; i < n; i++) { a += probs[i] * vcache[((c0 + i) * p.n_kv + kvh) * hd + d]; }
      acc[d] = a;
    }
    workgroupBarrier();
  }
  for (var d = tid; d < hd; d += WG) { out[qbase + d] = acc[d] / l; }
}
