// The expert formats and tiers shared by the expert kernels (shaders/experts.wgsl, experts_down.wgsl):
// the slot-table entry → the copy to read, and the dot product of one row of a copy with an input
// row in each format. The including shader binds its matrices and defines `weight(m, i)` (word i of
// its matrix m) and `input(m, i)` (element i of the input its matrix m multiplies); m is a constant at
// every call site, so those switches fold away.
// Formats of the high and the low tier (the same when there is one tier).
override HI_FMT: u32 = 0u;
override LO_FMT: u32 = 0u;
const BF16: u32 = 0u;
const INT8: u32 = 1u;
const INT4: u32 = 2u;
const MXFP4: u32 = 3u;
const GROUP: u32 = 32u;
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

// The f32 of an e2m1 code (sign in bit 3, exponent in bits 1…2, mantissa in bit 0): 0, 0.5, 1, 1.5, 2,
// 3, 4, 6 and their negatives. Built from bits, since indexing a constant array per code is slow.
fn e2m1(c: u32) -> f32 {
  let e = (c >> 1u) & 3u;
  let m = c & 1u;
  let mag = select(((e + 126u) << 23u) | (m << 22u), m * 0x3f000000u, e == 0u);
  return bitcast<f32>(mag | ((c & 8u) << 28u));
}

// Half-word `idx` (an f16) of the halves starting at word `at` of matrix m's buffer.
fn half_at(m: u32, at: u32, idx: u32) -> f32 {
  let v = unpack2x16float(weight(m, at + idx / 2u));
  return select(v.x, v.y, (idx & 1u) == 1u);
}

// Σ_c W[r, c] · input[v0 + c] over the words of row r that thread `tid` takes, W ([rows, cols]) being
// the copy of matrix m that starts at word `base` in format `fmt`. Thread j takes words j, j + WG, …
// of the row, so neighbouring threads read neighbouring words (coalesced) in every format: a word is
// two bf16 weights, four int8 codes or eight int4 / e2m1 codes, and its group's scale is read beside
// it. `fmt` is HI_FMT or LO_FMT at each call site, so the other formats' branches fold away.
fn row_dot(m: u32, fmt: u32, base: u32, rows: u32, cols: u32, r: u32, v0: u32, tid: u32) -> f32 {
  var acc = 0.0;
  if (fmt == BF16) {
    let row = base + r * (cols / 2u);
    for (var j = tid; j < cols / 2u; j += WG) {
      let w = weight(m, row + j);
      acc += bf16_lo(w) * input(m, v0 + 2u * j) + bf16_hi(w) * input(m, v0 + 2u * j + 1u);
    }
    return acc;
  }
  let n = rows * cols;
  let g0 = r * (cols / GROUP);
  if (fmt == INT8) {
    let row = base + r * (cols / 4u);
    let scales = base + n / 4u;
    for (var j = tid; j < cols / 4u; j += WG) {
      let w = weight(m, row + j);
      let v = v0 + 4u * j;
      let dot = f32(i32(w << 24u) >> 24u) * input(m, v) + f32(i32(w << 16u) >> 24u) * input(m, v + 1u) +
        f32(i32(w << 8u) >> 24u) * input(m, v + 2u) + f32(i32(w) >> 24u) * input(m, v + 3u);
      acc += half_at(m, scales, g0 + j / 8u) * dot;
    }
    return acc;
  }
  let row = base + r * (cols / 8u);
  if (fmt == INT4) {
    let scales = base + n / 8u;
    let mins = scales + (n / GROUP + 1u) / 2u;
    for (var j = tid; j < cols / 8u; j += WG) {
      let w = weight(m, row + j);
      let v = v0 + 8u * j;
      var dot = 0.0;
      var sum = 0.0;
      for (var b = 0u; b < 8u; b++) {
        let x = input(m, v + b);
        dot += f32((w >> (4u * b)) & 15u) * x;
        sum += x;
      }
      let g = g0 + j / 4u;
      acc += half_at(m, scales, g) * dot + half_at(m, mins, g) * sum;
    }
    return acc;
  }
  // MXFP4
  let exps = base + n / 8u;
  for (var j = tid; j < cols / 8u; j += WG) {
    let w = weight(m, row + j);
    let v = v0 + 8u * j;
    var dot = 0.0;
    for (var b = 0u; b < 8u; b++) { dot += e2m1((w >> (4u * b)) & 15u) * input(m, v + b); }
    let g = g0 + j / 4u;
    let e = (weight(m, exps + g / 4u) >> (8u * (g % 4u))) & 255u;
    acc += exp2(f32(e) - 127.0) * dot;
  }
  return acc;
}

// Row r of the copy that slot-table `entry` names, dotted as row_dot does: the entry's tier picks the
// format and the first word.
fn copy_dot(m: u32, entry: i32, rows: u32, cols: u32, r: u32, v0: u32, tid: u32) -> f32 {
  let e = u32(entry);
  let slot = e & SLOT_MASK;
  if ((e >> TIER_SHIFT) == 0u) { return row_dot(m, HI_FMT, slot * p.hi_words, rows, cols, r, v0, tid); }
  return row_dot(m, LO_FMT, p.lo_base + slot * p.lo_words, rows, cols, r, v0, tid);
}

// Words of a [rows, cols] matrix in format `fmt` before its bias (src/quant/formats.ts matrixLayout's
// `biasAt`): the codes, then the scales (int4: then the minimums), each region padded to whole words.
fn bias_word(fmt: u32, rows: u32, cols: u32) -> u32 {
  let n = rows * cols;
  if (fmt == BF16) { return (n + 1u) / 2u; }
  let groups = n / GROUP;
  if (fmt == INT8) { return n / 4u + (groups + 1u) / 2u; }
  if (fmt == INT4) { return n / 8u + 2u * ((groups + 1u) / 2u); }
  return n / 8u + (groups + 3u) / 4u; // MXFP4: a byte per group
}

// The bias of row r of the copy that slot-table `entry` names: `rows` bf16 values after the matrix's
// other regions (gpt-oss's experts).
fn copy_bias(m: u32, entry: i32, rows: u32, cols: u32, r: u32) -> f32 {
  let e = u32(entry);
  let slot = e & SLOT_MASK;
  var at = slot * p.hi_words + bias_word(HI_FMT, rows, cols);
  if ((e >> TIER_SHIFT) != 0u) { at = p.lo_base + slot * p.lo_words + bias_word(LO_FMT, rows, cols); }
  let w = weight(m, at + r / 2u);
  return select(bf16_lo(w), bf16_hi(w), (r & 1u) == 1u);
}
