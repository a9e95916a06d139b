// The expert slots shared by the expert kernels: their Params, the routing and the slot table, and the
// slot-table entry → the resident copy to read. Included before expert_formats.wgsl.
//   topk_ids: [T, K] u32   slots: [moe_layers, E] i32: −1 when no copy of the expert is resident, else
//   its tier in bits 28…30 (0 the high tier, 1 the low tier) and its slot in bits 0…27
const TIER_SHIFT: u32 = 28u;
const SLOT_MASK: u32 = 0x0fffffffu;

// hi_words / lo_words: words of one matrix of this dispatch at each tier (its bias included);
// lo_base: the low tier's first word; swiglu_limit, swiglu_alpha: gpt-oss's clamped SwiGLU (`gate_up_oss`)
struct Params {
  dim: u32,
  inter: u32,
  top_k: u32,
  experts: u32,
  layer: u32,
  lo_base: u32,
  hi_words: u32,
  lo_words: u32,
  swiglu_limit: f32,
  swiglu_alpha: f32,
  _pad0: u32,
  _pad1: u32,
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> topk_ids: array<u32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;

// The slot-table entry of the expert that routed row `tk` (a token and one of its k) chose.
fn entry_of(tk: u32) -> i32 {
  return slots[p.layer * p.experts + topk_ids[tk]];
}

// A resident copy: its format's tier (0 high, 1 low) and its first word, from a slot-table entry.
struct Copy {
  tier: u32,
  base: u32,
}

fn copy_at(entry: i32) -> Copy {
  let e = u32(entry);
  let slot = e & SLOT_MASK;
  if ((e >> TIER_SHIFT) == 0u) { return Copy(0u, slot * p.hi_words); }
  return Copy(1u, p.lo_base + slot * p.lo_words);
}
