// The attention prologue for one token and head, fused: q/k RMSNorm (none, per head as in Qwen3, or
// over the whole projection as in OLMoE), rotary embedding (rotate_half, the Llama/HF layout), and
// the KV-cache write. One workgroup per (token t, head slot): slots [0, H) are query heads, written
// to q; slots [H, H + Hkv) are key/value heads, written to row t's sequence's cache region at row t's
// position (rows[t]: common.wgsl `Row`).
// torch: q_embed = (q * cos) + (rotate_half(q) * sin)
//   qkv: [T, H·hd + 2·Hkv·hd] (q | k | v per row)   q: [T, H, hd]   caches: [slots, ctx, Hkv, hd]
//   rope: [ctx, hd/2] cos then [ctx, hd/2] sin   q_norm, k_norm: bf16, [hd] or [H·hd] / [Hkv·hd]
override WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,
  ctx: u32,
  norm_mode: u32, // 0 none, 1 per head, 2 whole projection
  _p0: u32,
  _p1: u32,
  eps: f32,
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> rope: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(6) var<storage, read_write> vcache: array<f32>;
@group(0) @binding(7) var<storage, read> q_norm: array<u32>;
@group(0) @binding(8) var<storage, read> k_norm: array<u32>;
@group(0) @binding(9) var<storage, read> rows: array<Row>;

var<workgroup> xs: array<f32, MAX_HEAD_DIM>;
//!include reduce.wgsl

fn bf16_pick(v: u32, i: u32) -> f32 { return select(bf16_lo(v), bf16_hi(v), (i & 1u) == 1u); }


@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let slots = p.n_heads + p.n_kv;
  let lin = linear_wg(wg, nwg);
  let t = lin / slots;
  let slot = lin % slots;
  if (t >= step.t) { return; }
  let hd = p.head_dim;
  let half = hd / 2u;
  let q_dim = p.n_heads * hd;
  let kv_dim = p.n_kv * hd;
  let row = t * (q_dim + 2u * kv_dim);
  let is_q = slot < p.n_heads;
  let h = select(slot - p.n_heads, slot, is_q);
  let proj = select(row + q_dim, row, is_q); // start of this row's q or k projection
  let width = select(kv_dim, q_dim, is_q);
  let src = proj + h * hd;

  // RMSNorm scale (mean over the head, or over the whole projection)
  var inv = 1.0;
  if (p.norm_mode != 0u) {
    let lo = select(proj, src, p.norm_mode == 1u);
    let n = select(width, hd, p.norm_mode == 1u);
    var ss = 0.0;
    for (var i = tid; i < n; i += WG) { let x = qkv[lo + i]; ss += x * x; }
    inv = inverseSqrt(wg_sum(tid, ss) / f32(n) + p.eps);
  }
  for (var i = tid; i < hd; i += WG) {
    var x = qkv[src + i];
    if (p.norm_mode != 0u) {
      let wi = select(h * hd + i, i, p.norm_mode == 1u);
      if (is_q) { x *= inv * bf16_pick(q_norm[wi / 2u], wi); } else { x *= inv * bf16_pick(k_norm[wi / 2u], wi); }
    }
    xs[i] = x;
  }
  workgroupBarrier();
  let r = rows[t];
  let pos = r.pos;
  let cache_row = r.slot * p.ctx + pos; // this position's row of the sequence's cache region
  for (var i = tid; i < half; i += WG) {
    let c = rope[pos * half + i];
    let s = rope[p.ctx * half + pos * half + i];
    let a = xs[i];
    let b = xs[i + half];
    if (is_q) {
      let dst = (t * p.n_heads + h) * hd;
      q[dst + i] = a * c - b * s;
      q[dst + i + half] = b * c + a * s;
    } else {
      let dst = (cache_row * p.n_kv + h) * hd;
      kcache[dst + i] = a * c - b * s;
      kcache[dst + i + half] = b * c + a * s;
    }
  }
  if (!is_q) {
    let dst = (cache_row * p.n_kv + h) * hd;
    for (var i = tid; i < hd; i += WG) { vcache[dst + i] = qkv[row + q_dim + kv_dim + h * hd + i]; }
  }
}
