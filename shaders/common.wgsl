// Shared declarations, prepended to every shader by src/gpu/pipelines.ts.
//
// Step and each kernel's Params are bound as read-only storage buffers (`var<storage, read>`), not
// uniform buffers: Mesa's lavapipe 22.x inlines uniform-buffer values that decide a branch or a loop
// bound, compiling the shader again at every dispatch and never freeing the old code (13 MiB per
// token, issue 17; tests/support/lavapipe_uniform_inlining.ts). It never inlines storage loads.
//
// Step: what changes from one forward call to the next (written once per call).
//   t           rows (tokens) in this call
//   pos0        absolute position of row 0 when the call's rows are one sequence's, in order (the
//               encoder-decoder's kernels read it; decoder-only models read each row's `Row`)
//   head_row0   first row whose logits are wanted (the logits rows are the call's last rows)
//   head_rows   how many rows' logits are wanted
//   splits      the most attention splits (flash-decoding partials) of any row, see src/kernels/step.ts
//   count_stats 1: the routing statistics count this call's rows; 0: they do not (a rebuilt KV cache)
struct Step {
  t: u32,
  pos0: u32,
  head_row0: u32,
  head_rows: u32,
  splits: u32,
  count_stats: u32,
  _pad1: u32,
  _pad2: u32,
}

// Row: one row (token) of a call, an entry of the `rows` table the CPU writes with the Step, so that
// the rows of one call may belong to different sequences at different positions (batched decoding).
//   slot       the sequence's slot: its KV-cache region, sampler settings and generated tokens
//   pos        the row's absolute position in its sequence (rotary angle, KV-cache row, causal mask)
//   split_keys keys per attention split of this row's query
//   gen        the index of the token this row's logits are sampled into (NO_GEN for none); a row
//              with gen >= 1 reads its input token from its slot's token gen - 1 (written by the
//              sampler on the GPU), the others from `ids`
struct Row {
  slot: u32,
  pos: u32,
  split_keys: u32,
  gen: u32,
}
const NO_GEN: u32 = 0xffffffffu;

// bf16 weights are stored as in the checkpoint, two per u32 (little-endian: element 2j in the low half).
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }

// Workgroup index over a 2D grid (dispatches above 65535 workgroups spill into y).
fn linear_wg(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.x + wg.y * nwg.x; }

const NEG_INF: f32 = -3.0e38;
