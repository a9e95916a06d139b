// Experts reading their weights from GPU expert slots through the slot table, first half: SwiGLU
// (`gate_up`, the causal families), ReLU (`wi_relu`, Switch Transformers' DenseReluDense, whose wi
// sits in `gate`) or gpt-oss's clamped SwiGLU (`gate_up_oss`, whose fused gate_up [2I, D] with its
// bias sits in `gate`). The down projection is experts_down.wgsl (a module per half keeps each
// entry's bindings within the device's storage-buffer limit).
//   x: [T, D] normalised hidden   topk_ids: [T, K]   h: [T·K, I] f32, written
//   slots: [moe_layers, E] i32: −1 when no copy of the expert is resident, else the copy to use: its
//          tier in bits 28…30 (0 the high tier, 1 the low tier) and its slot in bits 0…27
//   gate, up: [I, D] matrices, down: [D, I], one buffer each per layer: the high tier's slots from
//          word 0 (hi_words apiece), then the low tier's from word lo_base (lo_words apiece), each
//          matrix in its tier's format (src/quant/formats.ts): bf16 as stored; int8 and int4 codes,
//          then an f16 scale per 32 weights of a row (int4: then an f16 minimum per 32); mxfp4 e2m1
//          codes, then a u8 exponent per 32; gpt-oss's gate_up [2I, D] and down then a bf16 bias per row
// torch: current_hidden_states = self.act_fn(gate) * up
//   Switch: hidden_states = self.act(self.wi(hidden_states))
//   gpt-oss: gate_up = current_state @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
//            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
// The token-experts tk are the workgroups' fast index, the weight rows the slow one: the workgroups
// that read the same rows of one expert for the tokens of different sequences (a batched step) run
// side by side, so each expert's weights come from memory about once per step, through the GPU's
// cache, however many sequences routed to it; a token's sums are the same whatever its neighbours.
override WG: u32 = 64u;

//!include expert_slots.wgsl
//!include expert_formats.wgsl
//!include reduce.wgsl

@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> gate: array<u32>;
@group(0) @binding(6) var<storage, read> up: array<u32>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

const GATE: u32 = 0u;
const UP: u32 = 1u;

fn weight(m: u32, i: u32) -> u32 {
  if (m == GATE) { return gate[i]; }
  return up[i];
}

fn input(m: u32, i: u32) -> f32 {
  return x[i];
}

// Rows i and i + 1 (when i + 1 < inter) of gate and of up, dotted with x from element v0: (gate_i,
// gate_i+1, up_i, up_i+1), this thread's share. Gate and up read x once for the four rows.
fn gate_up_rows(fmt: u32, base: u32, i: u32, v0: u32, tid: u32) -> vec4<f32> {
  let pw = per_word(fmt);
  let two = i + 1u < p.inter;
  var acc = vec4<f32>(0.0);
  for (var j = tid; j < p.dim / pw; j += WG) {
    let xs = load_x(GATE, fmt, v0 + j * pw);
    acc.x += word_dot(GATE, fmt, base, p.inter, p.dim, i, j, xs);
    acc.z += word_dot(UP, fmt, base, p.inter, p.dim, i, j, xs);
    if (two) {
      acc.y += word_dot(GATE, fmt, base, p.inter, p.dim, i + 1u, j, xs);
      acc.w += word_dot(UP, fmt, base, p.inter, p.dim, i + 1u, j, xs);
    }
  }
  return acc;
}

// h[tk, i…i+1] = silu(x[t] · gate_s[i]) * (x[t] · up_s[i]), one workgroup per tk and pair of i.
@compute @workgroup_size(WG)
fn gate_up(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let rows_tk = step.t * p.top_k;
  let tk = lin % rows_tk;
  let i = 2u * (lin / rows_tk);
  if (i >= p.inter) { return; } // (a 2D grid's last workgroups are past the end)
  let t = tk / p.top_k;
  let entry = entry_of(tk);
  var acc = vec4<f32>(0.0);
  if (entry >= 0) {
    let c = copy_at(entry);
    if (c.tier == 0u) {
      acc = gate_up_rows(HI_FMT, c.base, i, t * p.dim, tid);
    } else {
      acc = gate_up_rows(LO_FMT, c.base, i, t * p.dim, tid);
    }
  }
  let sum = wg_sum4(tid, acc);
  if (tid == 0u) {
    h[tk * p.inter + i] = sum.x / (1.0 + exp(-sum.x)) * sum.z;
    if (i + 1u < p.inter) { h[tk * p.inter + i + 1u] = sum.y / (1.0 + exp(-sum.y)) * sum.w; }
  }
}

// Rows i … i + 3 (those < inter) of gate (Switch's wi), dotted with x from element v0.
fn wi_rows(fmt: u32, base: u32, i: u32, v0: u32, tid: u32) -> vec4<f32> {
  let pw = per_word(fmt);
  let rows = min(p.inter - i, 4u);
  var acc = vec4<f32>(0.0);
  for (var j = tid; j < p.dim / pw; j += WG) {
    let xs = load_x(GATE, fmt, v0 + j * pw);
    acc.x += word_dot(GATE, fmt, base, p.inter, p.dim, i, j, xs);
    if (rows > 1u) { acc.y += word_dot(GATE, fmt, base, p.inter, p.dim, i + 1u, j, xs); }
    if (rows > 2u) { acc.z += word_dot(GATE, fmt, base, p.inter, p.dim, i + 2u, j, xs); }
    if (rows > 3u) { acc.w += word_dot(GATE, fmt, base, p.inter, p.dim, i + 3u, j, xs); }
  }
  return acc;
}

// h[tk, i…i+3] = relu(x[t] · gate_s[i]) (Switch's wi), one workgroup per tk and four of i.
@compute @workgroup_size(WG)
fn wi_relu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let rows_tk = step.t * p.top_k;
  let tk = lin % rows_tk;
  let i = 4u * (lin / rows_tk);
  if (i >= p.inter) { return; } // (a 2D grid's last workgroups are past the end)
  let t = tk / p.top_k;
  let entry = entry_of(tk);
  var acc = vec4<f32>(0.0);
  if (entry >= 0) {
    let c = copy_at(entry);
    if (c.tier == 0u) {
      acc = wi_rows(HI_FMT, c.base, i, t * p.dim, tid);
    } else {
      acc = wi_rows(LO_FMT, c.base, i, t * p.dim, tid);
    }
  }
  let sum = max(wg_sum4(tid, acc), vec4<f32>(0.0));
  if (tid == 0u) {
    for (var r = 0u; r < min(p.inter - i, 4u); r++) { h[tk * p.inter + i + r] = sum[r]; }
  }
}

// σ(z) without overflow: exp of a non-positive argument only.
fn sigmoid(z: f32) -> f32 {
  let e = exp(-abs(z));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

// Rows 2i … 2i + 3 of gpt-oss's fused gate_up [2I, D] (gate i, up i, gate i + 1, up i + 1; the last two
// when i + 1 < inter), dotted with x from element v0: (gate_i, gate_i+1, up_i, up_i+1), this thread's share.
fn gate_up_oss_rows(fmt: u32, base: u32, i: u32, v0: u32, tid: u32) -> vec4<f32> {
  let pw = per_word(fmt);
  let rows = 2u * p.inter;
  let two = i + 1u < p.inter;
  var acc = vec4<f32>(0.0);
  for (var j = tid; j < p.dim / pw; j += WG) {
    let xs = load_x(GATE, fmt, v0 + j * pw);
    acc.x += word_dot(GATE, fmt, base, rows, p.dim, 2u * i, j, xs);
    acc.z += word_dot(GATE, fmt, base, rows, p.dim, 2u * i + 1u, j, xs);
    if (two) {
      acc.y += word_dot(GATE, fmt, base, rows, p.dim, 2u * i + 2u, j, xs);
      acc.w += word_dot(GATE, fmt, base, rows, p.dim, 2u * i + 3u, j, xs);
    }
  }
  return acc;
}

// gpt-oss's activation of one (gate, up) pair, biases added.
// torch: gate = gate.clamp(min=None, max=self.limit); up = up.clamp(min=-self.limit, max=self.limit)
//        glu = gate * torch.sigmoid(gate * self.alpha); gated_output = (up + 1) * glu
fn clamped_swiglu(gate: f32, up: f32) -> f32 {
  let g = min(gate, p.swiglu_limit);
  let u = clamp(up, -p.swiglu_limit, p.swiglu_limit);
  return (u + 1.0) * g * sigmoid(p.swiglu_alpha * g);
}

// gpt-oss: h[tk, i…i+1] = (clamp(up, −limit, limit) + 1) · g · σ(alpha · g), g = min(gate, limit), where
// gate = x[t] · W[2i] + b[2i] and up = x[t] · W[2i + 1] + b[2i + 1] of the fused gate_up W [2I, D] and its
// bias b [2I] (rows interleaved); one workgroup per tk and pair of i.
@compute @workgroup_size(WG)
fn gate_up_oss(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let rows_tk = step.t * p.top_k;
  let tk = lin % rows_tk;
  let i = 2u * (lin / rows_tk);
  if (i >= p.inter) { return; } // (a 2D grid's last workgroups are past the end)
  let t = tk / p.top_k;
  let entry = entry_of(tk);
  var acc = vec4<f32>(0.0);
  var c = Copy(0u, 0u);
  if (entry >= 0) {
    c = copy_at(entry);
    if (c.tier == 0u) {
      acc = gate_up_oss_rows(HI_FMT, c.base, i, t * p.dim, tid);
    } else {
      acc = gate_up_oss_rows(LO_FMT, c.base, i, t * p.dim, tid);
    }
  }
  let sum = wg_sum4(tid, acc);
  if (tid != 0u) { return; }
  let rows = 2u * p.inter;
  for (var r = 0u; r < min(p.inter - i, 2u); r++) {
    var out = 0.0;
    if (entry >= 0) {
      let row = 2u * (i + r);
      out = clamped_swiglu(sum[r] + copy_bias(GATE, c, rows, p.dim, row),
        sum[2u + r] + copy_bias(GATE, c, rows, p.dim, row + 1u));
    }
    h[tk * p.inter + i + r] = out;
  }
}

// The bf16 fast path of `gate_up` (every copy bf16, dim a multiple of 8): h[tk, i…i+3] = silu(x[t] ·
// gate_s[i]) * (x[t] · up_s[i]), one workgroup per tk and four of i, its WG threads split into eight rows
// of weights (gate rows i…i+3, then the same up rows), WG / 8 threads a row, each loading eight weights
// (a vec4<u32>) and eight inputs at a time: a quarter of the loads of `gate_up`, which reads a word at
// a time in every format. Each row's sum is its own, whatever the others in the workgroup.
@group(0) @binding(8) var<storage, read> gate8: array<vec4<u32>>; // gate, 8 bf16 per element
@group(0) @binding(9) var<storage, read> up8: array<vec4<u32>>;
@group(0) @binding(10) var<storage, read> x4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn gate_up_bf16(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let rows_tk = step.t * p.top_k;
  let tk = lin % rows_tk;
  let i0 = 4u * (lin / rows_tk);
  if (i0 >= p.inter) { return; } // (a 2D grid's last workgroups are past the end)
  let t = tk / p.top_k;
  let lanes = WG / 8u;
  let lane = tid % lanes;
  let row = tid / lanes; // 0…3: gate rows i0 + row; 4…7: up rows i0 + row − 4
  let is_up = row >= 4u;
  let i = i0 + row % 4u;
  let entry = entry_of(tk);
  var acc = 0.0;
  if (entry >= 0 && i < p.inter) {
    let n8 = p.dim / 8u;
    let wrow = copy_at(entry).base / 4u + i * n8; // (a copy's words: a multiple of 4)
    let xrow = t * (p.dim / 4u);
    for (var j = lane; j < n8; j += lanes) {
      var ww: vec4<u32>;
      if (is_up) { ww = up8[wrow + j]; } else { ww = gate8[wrow + j]; } // (uniform across a row's lanes)
      acc += dot(vec4<f32>(bf16_lo(ww.x), bf16_hi(ww.x), bf16_lo(ww.y), bf16_hi(ww.y)), x4[xrow + 2u * j]);
      acc += dot(vec4<f32>(bf16_lo(ww.z), bf16_hi(ww.z), bf16_lo(ww.w), bf16_hi(ww.w)), x4[xrow + 2u * j + 1u]);
    }
  }
  wg_sum_runs(tid, lanes, acc);
  if (lane == 0u && !is_up && i < p.inter) {
    let g = wg_f32[tid];
    h[tk * p.inter + i] = g / (1.0 + exp(-g)) * wg_f32[tid + 4u * lanes]; // (its up row, four rows on)
  }
}

// Word `w` of gate or up through their vec4 views.
fn word8(is_up: bool, w: u32) -> u32 {
  if (is_up) { return up8[w / 4u][w % 4u]; }
  return gate8[w / 4u][w % 4u];
}

// Group gi (row · groups + g) of the int4 copy of gate or up from word `base` against its inputs x.
fn gate_up_group(is_up: bool, base: u32, gi: u32, x: Group32) -> f32 {
  let at = int4_regions(base, p.inter * p.dim);
  var q: vec4<u32>;
  if (is_up) { q = up8[base / 4u + gi]; } else { q = gate8[base / 4u + gi]; } // a group is four words
  let d = int4_group(q, x);
  return half_of(word8(is_up, at.x + gi / 2u), gi) * d.x + half_of(word8(is_up, at.y + gi / 2u), gi) * d.y;
}

// The int4 fast path of `gate_up` (every copy int4, dim and inter multiples of 32, every copy's words a
// multiple of 4): h[tk, i…i+3] = silu(x[t] · gate_s[i]) * (x[t] · up_s[i]), one workgroup per tk and four of i.
// Thread j takes the groups of 32 columns j, j + WG, …: it loads a group's 32 inputs once, then for each
// of the eight rows (gate and up rows i…i+3) the group's 32 codes as one vec4<u32>, with their scale and
// minimum (`gate_up` reads a word at a time, with a scale and a minimum per word).
@compute @workgroup_size(WG)
fn gate_up_int4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) tid: u32) {
  let lin = linear_wg(wg, nwg);
  let rows_tk = step.t * p.top_k;
  let tk = lin % rows_tk;
  let i0 = 4u * (lin / rows_tk);
  if (i0 >= p.inter) { return; } // (a 2D grid's last workgroups are past the end)
  let t = tk / p.top_k;
  let entry = entry_of(tk);
  var ga = vec4<f32>(0.0); // gate rows i0 … i0 + 3
  var ua = vec4<f32>(0.0); // up rows
  if (entry >= 0) {
    let base = copy_at(entry).base;
    let groups = p.dim / GROUP;
    let r = (vec4<u32>(i0) + vec4<u32>(0u, 1u, 2u, 3u)) * groups; // (inter is a multiple of 32: all four exist)
    let xrow = t * (p.dim / 4u);
    for (var g = tid; g < groups; g += WG) {
      let a = xrow + 8u * g;
      let x = Group32(x4[a], x4[a + 1u], x4[a + 2u], x4[a + 3u], x4[a + 4u], x4[a + 5u], x4[a + 6u], x4[a + 7u]);
      ga += vec4<f32>(gate_up_group(false, base, r.x + g, x), gate_up_group(false, base, r.y + g, x),
        gate_up_group(false, base, r.z + g, x), gate_up_group(false, base, r.w + g, x));
      ua += vec4<f32>(gate_up_group(true, base, r.x + g, x), gate_up_group(true, base, r.y + g, x),
        gate_up_group(true, base, r.z + g, x), gate_up_group(true, base, r.w + g, x));
    }
  }
  let sg = wg_sum4(tid, ga);
  let su = wg_sum4(tid, ua);
  if (tid == 0u) {
    for (var q = 0u; q < 4u; q++) { h[tk * p.inter + i0 + q] = sg[q] / (1.0 + exp(-sg[q])) * su[q]; }
  }
}
