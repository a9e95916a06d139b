// Token sampling on the GPU, one workgroup per logits row: greedy (argmax) or temperature → top-k →
// top-p → draw. Logits row h belongs to the call's row head_row0 + h (rows: common.wgsl `Row`), of the
// sequence in its slot: it is sampled with that slot's settings into that slot's generated[gen] (read
// back in batches), where the next step's embedding reads it, so decoding needs no CPU round trip per
// token. A row holding a NaN or an infinity gives NON_FINITE instead of a token, which the engine
// reports when it reads it back.
//   logits: [head_rows, V] f32   params: [slots] Params   generated: [slots, MAX_GEN] u32
// top-k and top-p are thresholds on an order-preserving u32 key of the logits, found exactly by a
// 32-pass radix select: τ_k is the k-th largest key; τ_p the largest key c such that the tokens with
// key ≥ c carry at least top_p of the probability mass left after top-k (transformers'
// TopPLogitsWarper: the smallest top set whose mass reaches top_p).
override WG: u32 = 256u;
// Written instead of a token when the logits are not all finite (src/kernels/sample.ts sets it).
override NON_FINITE: u32;
// Tokens per slot of `generated`: the most one sequence generates.
override MAX_GEN: u32;

struct Params {
  vocab: u32,
  top_k: u32,       // 0: off
  top_p: f32,       // 1: off
  temperature: f32, // 0: greedy
  seed: u32,
  min_tokens: u32,  // end-of-sequence ids are impossible while gen < min_tokens
  n_eos: u32,
  _p0: u32,
  eos: vec4<u32>,   // up to 4 end-of-sequence ids
}

@group(0) @binding(0) var<storage, read> step: Step;
// Each slot's settings, written when a sequence takes the slot (the model allocates it).
@group(0) @binding(1) var<storage, read> params: array<Params>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<Row>;
@group(0) @binding(4) var<storage, read_write> generated: array<u32>;

//!include reduce.wgsl

// Exponent all ones: NaN or ±infinity (a bit test: `f != f` may be folded away by a compiler).
fn is_finite(f: f32) -> bool {
  return (bitcast<u32>(f) & 0x7f800000u) != 0x7f800000u;
}

fn key(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}


fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// The logit of token i of the row at `base`, with end-of-sequence suppressed before the sequence's
// min_tokens (transformers' MinNewTokensLengthLogitsProcessor): `gen` is the token being sampled.
fn lg(p: Params, gen: u32, base: u32, i: u32) -> f32 {
  if (gen < p.min_tokens) {
    for (var j = 0u; j < p.n_eos; j++) { if (p.eos[j] == i) { return NEG_INF; } }
  }
  return logits[base + i];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let h = wg.x;
  if (h >= step.head_rows) { return; }
  let row = rows[step.head_row0 + h];
  let p = params[row.slot];
  let gen = row.gen;
  let out = row.slot * MAX_GEN + gen; // where this row's token goes
  let V = p.vocab;
  let base = h * V;
  let chunk = (V + WG - 1u) / WG;
  let lo = min(tid * chunk, V);
  let hi = min(lo + chunk, V);

  // argmax (lowest index among equals): greedy, and the fallback of sampling
  var bv = NEG_INF;
  var bi = 0xffffffffu;
  var finite = 1u;
  for (var i = lo; i < hi; i++) {
    if (!is_finite(logits[base + i])) { finite = 0u; }
    let v = lg(p, gen, base, i);
    if (bi == 0xffffffffu || v > bv) { bv = v; bi = i; }
  }
  // non-finite weights, or activations that overflowed: no token can be trusted
  if (wg_min_u32(tid, finite) == 0u) {
    if (tid == 0u) { generated[out] = NON_FINITE; }
    return;
  }
  let m = wg_max(tid, bv);
  let best = wg_min_u32(tid, select(0xffffffffu, bi, bv == m && bi != 0xffffffffu));
  if (p.temperature <= 0.0) {
    if (tid == 0u) { generated[out] = best; }
    return;
  }

  // τ_k: the k-th largest key (0 keeps everything)
  var tk = 0u;
  if (p.top_k > 0u && p.top_k < V) {
    for (var bit = 31; bit >= 0; bit--) {
      let cand = tk | (1u << u32(bit));
      var c = 0u;
      for (var i = lo; i < hi; i++) { if (key(lg(p, gen, base, i)) >= cand) { c += 1u; } }
      if (wg_sum_u32(tid, c) >= p.top_k) { tk = cand; }
    }
  }
  let inv_t = 1.0 / p.temperature;
  var part = 0.0;
  for (var i = lo; i < hi; i++) {
    let l = lg(p, gen, base, i);
    if (key(l) >= tk) { part += exp((l - m) * inv_t); }
  }
  let total = wg_sum(tid, part);

  // τ_p over what top-k kept
  var tau = tk;
  if (p.top_p < 1.0) {
    let want = p.top_p * total;
    var c = 0u;
    for (var bit = 31; bit >= 0; bit--) {
      let cand = c | (1u << u32(bit));
      let thr = max(cand, tk);
      var mass = 0.0;
      for (var i = lo; i < hi; i++) {
        let l = lg(p, gen, base, i);
        if (key(l) >= thr) { mass += exp((l - m) * inv_t); }
      }
      if (wg_sum(tid, mass) >= want) { c = cand; }
    }
    tau = max(c, tk);
  }

  // draw u in [0, kept mass) and find its token by a prefix over per-thread chunks
  var mine = 0.0;
  for (var i = lo; i < hi; i++) {
    let l = lg(p, gen, base, i);
    if (key(l) >= tau) { mine += exp((l - m) * inv_t); }
  }
  // each thread's kept mass, side by side in the reductions' scratch
  workgroupBarrier();
  wg_f32[tid] = mine;
  workgroupBarrier();
  if (tid == 0u) {
    var kept = 0.0;
    for (var j = 0u; j < WG; j++) { kept += wg_f32[j]; }
    let r = pcg(pcg(p.seed) ^ pcg(gen + 0x9e3779b9u));
    let u = (f32(r >> 8u) / 16777216.0) * kept;
    var acc = 0.0;
    var tok = best;
    var found = false;
    for (var j = 0u; j < WG && !found; j++) {
      if (acc + wg_f32[j] > u) {
        let jlo = min(j * chunk, V);
        let jhi = min(jlo + chunk, V);
        for (var i = jlo; i < jhi; i++) {
          let l = lg(p, gen, base, i);
          if (key(l) >= tau) {
            acc += exp((l - m) * inv_t);
            if (acc > u) { tok = i; found = true; break; }
          }
        }
        found = true;
      } else {
        acc += wg_f32[j];
      }
    }
    generated[out] = tok;
  }
}
