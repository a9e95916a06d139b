// Experts of a long call (prefill), around the tiled matmuls (experts_tiled.wgsl, experts_tiled_down.wgsl):
// `group` lists the token-expert rows by expert, in tiles; `combine` adds each token's weighted expert
// outputs into the residual.
//   topk_ids, topk_w: [T, K]   slots: [moe_layers, E] i32 (experts.wgsl)   yk: [T·K, D] f32 (down_tiled)
//   y: [T, D] residual
//   route: u32 words: [0] the tile count; [1, 1 + T·K) the rows tk = t·K + k whose expert has a resident
//          copy, grouped by expert (experts in order; within an expert in no fixed order: each row's
//          result does not depend on where it sits); from 1 + T·K three words per tile: the expert's
//          slot-table entry, the tile's first index into the grouped rows, its row count (1 … TILE). An
//          expert of c rows has ceil(c / TILE) tiles, so there are at most ceil(T·K / TILE) + E.
// mlx-lm (switch_layers.py `_gather_sort`) orders the rows the same way: order = mx.argsort(indices.flatten())
override WG: u32; // threads of `group` (at least E) and of `combine`
override TILE: u32;

//!include expert_slots.wgsl

@group(0) @binding(8) var<storage, read> topk_w: array<f32>;
@group(0) @binding(10) var<storage, read_write> y: array<f32>;
@group(0) @binding(11) var<storage, read_write> route: array<u32>;
@group(0) @binding(12) var<storage, read> yk: array<f32>;

// rows of each expert: counted, then the next free index of its list while scattering
var<workgroup> fill: array<atomic<u32>, WG>;
// (rows, tiles) summed over experts 0 … e (an inclusive scan)
var<workgroup> scan: array<vec2<u32>, WG>;

// One workgroup, a thread per expert (E ≤ WG): count each expert's resident rows, scan the counts into
// list offsets and tile offsets, write the tiles, then scatter the rows into their expert's list.
@compute @workgroup_size(WG)
fn group(@builtin(local_invocation_index) tid: u32) {
  let n = step.t * p.top_k;
  atomicStore(&fill[tid], 0u);
  workgroupBarrier();
  for (var tk = tid; tk < n; tk += WG) {
    if (entry_of(tk) >= 0) { atomicAdd(&fill[topk_ids[tk]], 1u); }
  }
  workgroupBarrier();
  let rows = atomicLoad(&fill[tid]); // 0 past the last expert
  let tiles = (rows + TILE - 1u) / TILE;
  scan[tid] = vec2<u32>(rows, tiles);
  for (var s = 1u; s < WG; s <<= 1u) {
    workgroupBarrier();
    var v = scan[tid];
    if (tid >= s) { v += scan[tid - s]; }
    workgroupBarrier();
    scan[tid] = v;
  }
  let first = scan[tid] - vec2<u32>(rows, tiles); // this expert's first row and first tile
  let tiles_at = 1u + n;
  for (var j = 0u; j < tiles; j++) {
    let at = tiles_at + 3u * (first.y + j);
    route[at] = u32(slots[p.layer * p.experts + tid]);
    route[at + 1u] = first.x + j * TILE;
    route[at + 2u] = min(rows - j * TILE, TILE);
  }
  if (tid == WG - 1u) { route[0] = scan[tid].y; }
  atomicStore(&fill[tid], first.x);
  workgroupBarrier();
  for (var tk = tid; tk < n; tk += WG) {
    if (entry_of(tk) >= 0) { route[1u + atomicAdd(&fill[topk_ids[tk]], 1u)] = tk; }
  }
}

// y[t, d] += Σ_k w[t, k] · yk[t·K + k, d] over the k whose expert has a resident copy, k in order: a
// thread per element of y.
// torch: current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
//        final_hidden_states.index_add_(0, token_idx, current_hidden_states)
@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= step.t * p.dim) { return; }
  let t = i / p.dim;
  let d = i % p.dim;
  var acc = 0.0;
  for (var k = 0u; k < p.top_k; k++) {
    let tk = t * p.top_k + k;
    if (entry_of(tk) < 0) { continue; }
    acc += topk_w[tk] * yk[tk * p.dim + d];
  }
  y[i] += acc;
}
