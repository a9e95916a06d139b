// Experts of a long call (prefill), second half: the down projection of each token-expert's h, tiled as
// experts_tiled.wgsl (a workgroup per tile of one expert's rows and block of BLOCK rows of down), into one
// row of yk per token-expert; experts_group.wgsl `combine` then weights and sums them into the residual
// (adding per expert here would race between the tiles of a token's experts).
//   h: [T·K, I] f32 (experts_tiled.wgsl)   down: [D, I] per copy   yk: [T·K, D] f32, written for every
//   token-expert with a resident copy
// torch: current_hidden_states = nn.functional.linear(current_hidden_states, self.down_proj[expert_idx])

//!include expert_slots.wgsl
//!include expert_formats.wgsl
//!include expert_tiles.wgsl

@group(0) @binding(7) var<storage, read> h: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> down: array<vec4<u32>>;
@group(0) @binding(12) var<storage, read_write> yk: array<f32>;

const DOWN: u32 = 2u;

// down and h as vec4 arrays (lib/expert_tiles.wgsl loads whole quads); words and elements one by one for
// the other formats and columns.
fn weight4(m: u32, i4: u32) -> vec4<u32> {
  return down[i4];
}

fn weight(m: u32, i: u32) -> u32 {
  return down[i / 4u][i % 4u];
}

fn input4(m: u32, i4: u32) -> vec4<f32> {
  return h[i4];
}

fn input(m: u32, i: u32) -> f32 {
  return h[i / 4u][i % 4u];
}

// yk[tk, d] = h[tk] · down_s[d] for the tile's tk and BLOCK rows d.
@compute @workgroup_size(THREADS)
fn down_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) tid: u32) {
  let t = tile_at(linear_wg(wg, nwg), (p.dim + BLOCK - 1u) / BLOCK);
  if (t.count == 0u) { return; }
  stage_rows(t, tid);
  let d0 = t.block * BLOCK;
  let half = BLOCK / 2u;
  let hv = Halves(DOWN, d0, DOWN, d0 + half);
  let c = copy_at(t.entry);
  var acc: Acc;
  if (c.tier == 0u) {
    acc = tile_matmul(HI_FMT, c.base, hv, p.dim, p.inter, t.count, 1u, tid);
  } else {
    acc = tile_matmul(LO_FMT, c.base, hv, p.dim, p.inter, t.count, 1u, tid);
  }
  let tq = tid / RQ;
  let rq = tid % RQ;
  for (var j = 0u; j < 4u; j++) {
    if (4u * tq + j >= t.count) { break; }
    let tk = tile_tk[4u * tq + j];
    for (var q = 0u; q < 8u; q++) {
      let d = d0 + (q / 4u) * half + 4u * rq + q % 4u;
      if (d < p.dim) { yk[tk * p.dim + d] = acc.v[j + 4u * (q / 4u)][q % 4u]; }
    }
  }
}
