// Routing statistics of one pass of a stack (encoder or decoder), once after its routers ran: one
// thread per (MoE layer of the stack, expert). router.wgsl's `accumulate` over the MoE layers
// layer0 … layer0 + n_layers − 1 only, as the other stack's regions hold another call's choices.
//   utopk_ids / utopk_p: [moe_layers, rows_cap, K]   xnorm: [moe_layers, rows_cap]   slots: [moe_layers, E]
//   stats: [moe_layers, E, 4] f32 += (times chosen by the unmasked router, Σ ‖x‖·G(x)_e, hits, 0)
override WG: u32 = 64u;

struct Params { experts: u32, top_k: u32, rows_cap: u32, layer0: u32, n_layers: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> slots: array<i32>;
@group(0) @binding(7) var<storage, read> utopk_ids: array<u32>;
@group(0) @binding(8) var<storage, read> utopk_p: array<f32>;
@group(0) @binding(9) var<storage, read> xnorm: array<f32>;
@group(0) @binding(10) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= p.n_layers * p.experts) { return; }
  let layer = p.layer0 + gid.x / p.experts;
  let e = gid.x % p.experts;
  let le = layer * p.experts + e;
  let region = layer * p.rows_cap;
  var used = 0.0;
  var imp = 0.0;
  for (var t = 0u; t < step.t; t++) {
    for (var k = 0u; k < p.top_k; k++) {
      if (utopk_ids[(region + t) * p.top_k + k] == e) {
        used += 1.0;
        imp += xnorm[region + t] * utopk_p[(region + t) * p.top_k + k];
      }
    }
  }
  let o = le * 4u;
  stats[o] += used;
  stats[o + 1u] += imp;
  if (slots[le] >= 0) { stats[o + 2u] += used; }
}
