// Experts of a long call (prefill), first half, with tokens grouped by expert (experts_group.wgsl): a
// workgroup per tile of up to TILE token-expert rows of one expert and block of its rows, through workgroup
// memory (lib/expert_tiles.wgsl), so each tile reads its expert's weights once. SwiGLU (`gate_up_tiled`, the
// causal families) or ReLU (`wi_relu_tiled`, Switch, whose wi sits in `gate`). Computes what experts.wgsl's
// GEMVs compute, in the same layouts:
//   x: [T, D] normalised hidden   route: the grouped rows and tiles   h: [T·K, I] f32, written for every
//   token-expert with a resident copy   gate, up: [I, D] per copy, in the tier's format
// torch: current_hidden_states = self.act_fn(gate) * up
//   Switch: hidden_states = self.act(self.wi(hidden_states))

//!include expert_slots.wgsl
//!include expert_formats.wgsl
//!include expert_tiles.wgsl

@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> gate: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> up: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> h: array<f32>;

const GATE: u32 = 0u;
const UP: u32 = 1u;

// The matrices and x as vec4 arrays (lib/expert_tiles.wgsl loads whole quads); words and elements one by one
// for the other formats and columns.
fn weight4(m: u32, i4: u32) -> vec4<u32> {
  if (m == GATE) { return gate[i4]; }
  return up[i4];
}

fn weight(m: u32, i: u32) -> u32 {
  return weight4(m, i / 4u)[i % 4u];
}

fn input4(m: u32, i4: u32) -> vec4<f32> {
  return x[i4];
}

fn input(m: u32, i: u32) -> f32 {
  return x[i / 4u][i % 4u];
}

// The tile × (block of rows): copy and format from the tile's slot-table entry, inputs x[tk / K].
fn tile_of(t: Tile, hv: Halves, tid: u32) -> Acc {
  let c = copy_at(t.entry);
  if (c.tier == 0u) { return tile_matmul(HI_FMT, c.base, hv, p.inter, p.dim, t.count, p.top_k, tid); }
  return tile_matmul(LO_FMT, c.base, hv, p.inter, p.dim, t.count, p.top_k, tid);
}

// h[tk, i] = silu(x[t] · gate_s[i]) * (x[t] · up_s[i]) for the tile's tk and BLOCK / 2 rows i of gate and up.
@compute @workgroup_size(THREADS)
fn gate_up_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let half = BLOCK / 2u;
  let t = tile_at(linear_wg(wg, nwg), (p.inter + half - 1u) / half);
  if (t.count == 0u) { return; }
  stage_rows(t, tid);
  let i0 = t.block * half;
  var acc = tile_of(t, Halves(GATE, i0, UP, i0), tid);
  let tq = tid / RQ;
  let rq = tid % RQ;
  for (var j = 0u; j < 4u; j++) {
    if (4u * tq + j >= t.count) { break; }
    let tk = tile_tk[4u * tq + j];
    for (var q = 0u; q < 4u; q++) {
      let i = i0 + 4u * rq + q;
      let g = acc.v[j][q];
      if (i < p.inter) { h[tk * p.inter + i] = g / (1.0 + exp(-g)) * acc.v[4u + j][q]; }
    }
  }
}

// h[tk, i] = relu(x[t] · gate_s[i]) (Switch's wi) for the tile's tk and BLOCK rows i.
@compute @workgroup_size(THREADS)
fn wi_relu_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) tid: u32) {
  let t = tile_at(linear_wg(wg, nwg), (p.inter + BLOCK - 1u) / BLOCK);
  if (t.count == 0u) { return; }
  stage_rows(t, tid);
  let i0 = t.block * BLOCK;
  let half = BLOCK / 2u;
  var acc = tile_of(t, Halves(GATE, i0, GATE, i0 + half), tid);
  let tq = tid / RQ;
  let rq = tid % RQ;
  for (var j = 0u; j < 4u; j++) {
    if (4u * tq + j >= t.count) { break; }
    let tk = tile_tk[4u * tq + j];
    for (var q = 0u; q < 8u; q++) {
      let i = i0 + (q / 4u) * half + 4u * rq + q % 4u;
      if (i < p.inter) { h[tk * p.inter + i] = max(acc.v[j + 4u * (q / 4u)][q % 4u], 0.0); }
    }
  }
}
