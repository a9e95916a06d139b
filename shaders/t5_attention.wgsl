// T5 attention (Switch Transformers): softmax(q·Kᵀ + position_bias) · V with no 1/sqrt(hd) scaling
// (Mesh TensorFlow folds it into the initialisation of q), one workgroup per (token t, head h), keys in
// chunks of WG with an online softmax (running max m, running sum l).
// torch: scores = torch.matmul(query_states, key_states.transpose(3, 2)); scores += position_bias
//        attn_weights = softmax(scores.float(), dim=-1); attn_output = torch.matmul(attn_weights, value_states)
//   q: [T, H, hd]   k, v: [N, H, hd] (mode 0: this call's rows; 1: the self-attention cache; 2: the cross cache)
//   rel_bias: [num_buckets, H] bf16   buckets: u32 bucket per relative position (see src/kernels/t5.ts)
// Modes: 0 encoder self-attention, bidirectional over the call's step.t rows;
//        1 decoder self-attention, causal over cache positions <= pos0 + t;
//        2 cross-attention over the enc_info[0] encoder positions, no position bias.
override WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;

struct Params {
  n_heads: u32,
  head_dim: u32,
  mode: u32,
  has_bias: u32,
  bucket_base: u32, // first entry of this stack's bucket table in `buckets`
  rel_offset: u32,  // table index of relative position 0 (= longest span − 1)
  _p0: u32,
  _p1: u32,
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> rel_bias: array<u32>;
@group(0) @binding(7) var<storage, read> buckets: array<u32>;
@group(0) @binding(8) var<storage, read> enc_info: array<u32>; // [0]: encoder positions

var<workgroup> qs: array<f32, MAX_HEAD_DIM>;
var<workgroup> acc: array<f32, MAX_HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> stats: vec2<f32>; // (m, alpha)

// position_bias[h, qpos, j] = relative_attention_bias(bucket(j − qpos))[h]
fn bias(j: u32, qpos: u32, h: u32) -> f32 {
  let idx = p.bucket_base + u32(i32(j) - i32(qpos) + i32(p.rel_offset));
  let w = buckets[idx] * p.n_heads + h;
  let word = rel_bias[w / 2u];
  return select(bf16_lo(word), bf16_hi(word), (w & 1u) == 1u);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let t = lin / p.n_heads;
  let h = lin % p.n_heads;
  if (t >= step.t) { return; }
  let hd = p.head_dim;
  let row = p.n_heads * hd;
  var n_keys = step.t;
  var qpos = t;
  if (p.mode == 1u) {
    qpos = step.pos0 + t;
    n_keys = qpos + 1u;
  } else if (p.mode == 2u) {
    n_keys = enc_info[0];
  }
  let qbase = (t * p.n_heads + h) * hd;
  for (var d = tid; d < hd; d += WG) { qs[d] = q[qbase + d]; acc[d] = 0.0; }
  if (tid == 0u) { stats = vec2<f32>(NEG_INF, 0.0); }
  var l = 0.0; // running sum, kept identical in every thread
  workgroupBarrier();
  for (var c0 = 0u; c0 < n_keys; c0 += WG) {
    let j = c0 + tid;
    var s = NEG_INF;
    if (j < n_keys) {
      let kb = j * row + h * hd;
      var dot = 0.0;
      for (var d = 0u; d < hd; d++) { dot += qs[d] * k[kb + d]; }
      s = dot;
      if (p.has_bias == 1u) { s += bias(j, qpos, h); }
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
      for (var i = 0u; i < n; i++) { a += probs[i] * v[(c0 + i) * row + h * hd + d]; }
      acc[d] = a;
    }
    workgroupBarrier();
  }
  for (var d = tid; d < hd; d += WG) { out[qbase + d] = acc[d] / l; }
}

// The decoder's self-attention cache: kcache[pos0 + t] = k[t], vcache[pos0 + t] = v[t], rows of H·hd.
@group(0) @binding(9) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(10) var<storage, read_write> vcache: array<f32>;

@compute @workgroup_size(WG)
fn kv_write(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  let row = p.n_heads * p.head_dim;
  if (i >= step.t * row) { return; }
  let dst = step.pos0 * row + i;
  kcache[dst] = k[i];
  vcache[dst] = v[i];
}
