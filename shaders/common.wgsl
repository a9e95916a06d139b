// Shared declarations, prepended to every shader by src/gpu/pipelines.ts.
//
// Step and each kernel's Params are bound as read-only storage buffers (`var<storage, read>`), not
// uniform buffers: Mesa's lavapipe 22.x inlines uniform-buffer values that decide a branch or a loop
// bound, compiling the shader again at every dispatch and never freeing the old code (13 MiB per
// token, issue 17; tests/support/lavapipe_uniform_inlining.ts). It never inlines storage loads.
//
// Step: what changes from one forward call to the next (written once per call).
//   t          rows (tokens) in this call
//   pos0       absolute position of row 0 (the KV-cache length before this call)
//   head_row0  first row whose logits are wanted
//   head_rows  how many rows' logits are wanted
//   gen_index  index of the token being generated (sampler output slot, RNG stream)
//   split_keys keys per attention split (flash-decoding partials), see src/kernels/step.ts
struct Step {
  t: u32,
  pos0: u32,
  head_row0: u32,
  head_rows: u32,
  gen_index: u32,
  split_keys: u32,
  _pad1: u32,
  _pad2: u32,
}

// bf16 weights are stored as in the checkpoint, two per u32 (little-endian: element 2j in the low half).
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }

// Workgroup index over a 2D grid (dispatches above 65535 workgroups spill into y).
fn linear_wg(wg: vec3<u32>, nwg: vec3<u32>) -> u32 { return wg.x + wg.y * nwg.x; }

const NEG_INF: f32 = -3.0e38;
