// Rotary position embedding (rotate_half, the Llama/HF layout) on q in place, and k written into the
// KV cache with v beside it.
// torch: q_embed = (q * cos) + (rotate_half(q) * sin)
//   q: [T, H, hd]  k, v: [T, Hkv, hd]  cache: [ctx, Hkv, hd]  rope: [ctx, hd/2] cos then [ctx, hd/2] sin
override WG: u32 = 64u;

struct Params { n_heads: u32, n_kv: u32, head_dim: u32, ctx: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> rope: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> kcache: array<f32>;
@group(0) @binding(7) var<storage, read_write> vcache: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let half = p.head_dim / 2u;
  let idx = gid.x + gid.y * nwg.x * WG;
  let per_token = (p.n_heads + p.n_kv) * half;
  let t = idx / per_token;
  if (t >= step.t) { return; }
  let rem = idx % per_token;
  let head = rem / half;
  let i = rem % half;
  let pos = step.pos0 + t;
  let c = rope[pos * half + i];
  let s = rope[p.ctx * half + pos * half + i];
  if (head < p.n_heads) {
    let base = (t * p.n_heads + head) * p.head_dim;
    let a = q[base + i];
    let b = q[base + i + half];
    q[base + i] = a * c - b * s;
    q[base + i + half] = b * c + a * s;
  } else {
    let h = head - p.n_heads;
    let src = (t * p.n_kv + h) * p.head_dim;
    let dst = (pos * p.n_kv + h) * p.head_dim;
    let a = k[src + i];
    let b = k[src + i + half];
    kcache[dst + i] = a * c - b * s;
    kcache[dst + i + half] = b * c + a * s;
    vcache[dst + i] = v[src + i];
    vcache[dst + i + half] = v[src + i + half];
  }
}
