// x[t, d] = E[id_t, d]      E: [vocab, D] bf16
// id_t: ids[t] (written by the host), or for a row that samples token gen >= 1 of its sequence, that
// sequence's token gen - 1, which the sampler wrote into generated on the GPU (see common.wgsl `Row`).
//   ids: [maxT] u32   rows: [maxT] Row   generated: [slots, max_gen] u32
override WG: u32 = 64u;

struct Params { dim: u32, vocab: u32, max_gen: u32, _pad0: u32 }

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read> rows: array<Row>;
@group(0) @binding(6) var<storage, read> generated: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
  let t = linear_wg(wg, nwg);
  if (t >= step.t) { return; }
  let row = rows[t];
  var raw = ids[t];
  if (row.gen != NO_GEN && row.gen >= 1u) { raw = generated[row.slot * p.max_gen + row.gen - 1u]; }
  let id = min(raw, p.vocab - 1u);
  let half_dim = p.dim / 2u;
  for (var j = tid; j < half_dim; j += WG) {
    let ww = table[id * half_dim + j];
    x[t * p.dim + 2u * j] = bf16_lo(ww);
    x[t * p.dim + 2u * j + 1u] = bf16_hi(ww);
  }
}
