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

// hi_words / lo_words: words of one matrix of this dispatch at each tier; lo_base: the low tier's first word
struct Params {
  dim: u32,
  inter: u32,
  top_k: u32,
  experts: u32,
  layer: u32,
  lo_base: u32,
  hi_words: u32,
  lo_words: u32,
}

@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read> p: Params;
@group(0) @binding(2) var<storage, read> topk_ids: array<u32>;
@group(0) @binding(3) var<storage, read> slots: array<i32>;

// e2m1: sign in bit 3, then 0, 0.5, 1, 1.5, 2, 3, 4, 6
const E2M1 = array<f32, 16>(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0);

// Where a resident copy of an expert sits: its format and the first word of its matrix.
struct Copy {
  fmt: u32,
  base: u32,
}

fn entry_of(tk: u32) -> i32 {
  return slots[p.layer * p.experts + topk_ids[tk]];
}

fn copy_at(entry: i32) -> Copy {
  let e = u32(entry);
  let slot = e & SLOT_MASK;
  if ((e >> TIER_SHIFT) == 0u) { return Copy(HI_FMT, slot * p.hi_words); }
  return Copy(LO_FMT, p.lo_base + slot * p.lo_words);
}

// Half-word `idx` (an f16) of the halves starting at word `at` of matrix m's buffer.
fn half_at(m: u32, at: u32, idx: u32) -> f32 {
  let v = unpack2x16float(weight(m, at + idx / 2u));
  return select(v.x, v.y, (idx & 1u) == 1u);
}

// Σ_c W[r, c] · input[v0 + c] over the columns thread `tid` takes: W, [rows, cols], is matrix m's copy c.
// bf16 strides over pairs of columns, the quantized formats over groups of 32.
fn row_dot(m: u32, c: Copy, rows: u32, cols: u32, r: u32, v0: u32, tid: u32) -> f32 {
  var acc = 0.0;
  if (c.fmt == BF16) {
    let row = c.base + r * (cols / 2u);
    for (var j = tid; j < cols / 2u; j += WG) {
      let w = weight(m, row + j);
      acc += bf16_lo(w) * input(m, v0 + 2u * j) + bf16_hi(w) * input(m, v0 + 2u * j + 1u);
    }
    return acc;
  }
  let n = rows * cols;
  let groups = cols / GROUP;
  if (c.fmt == INT8) {
    let scales = c.base + n / 4u;
    for (var g = tid; g < groups; g += WG) {
      let gi = r * groups + g;
      let q0 = c.base + gi * 8u;
      let vg = v0 + g * GROUP;
      var dot = 0.0;
      for (var k = 0u; k < 8u; k++) {
        let w = weight(m, q0 + k);
        let v = vg + 4u * k;
        dot += f32(i32(w << 24u) >> 24u) * input(m, v) + f32(i32(w << 16u) >> 24u) * input(m, v + 1u) +
          f32(i32(w << 8u) >> 24u) * input(m, v + 2u) + f32(i32(w) >> 24u) * input(m, v + 3u);
      }
      acc += half_at(m, scales, gi) * dot;
    }
    return acc;
  }
  if (c.fmt == INT4) {
    let scales = c.base + n / 8u;
    let mins = scales + (n / GROUP + 1u) / 2u;
    for (var g = tid; g < groups; g += WG) {
      let gi = r * groups + g;
      let q0 = c.base + gi * 4u;
      let vg = v0 + g * GROUP;
      var dot = 0.0;
      var sum = 0.0;
      for (var k = 0u; k < 4u; k++) {
        let w = weight(m, q0 + k);
        for (var b = 0u; b < 8u; b++) {
          let v = input(m, vg + 8u * k + b);
          dot += f32((w >> (4u * b)) & 15u) * v;
          sum += v;
        }
      }
      acc += half_at(m, scales, gi) * dot + half_at(m, mins, gi) * sum;
    }
    return acc;
  }
  // MXFP4
  let exps = c.base + n / 8u;
  for (var g = tid; g < groups; g += WG) {
    let gi = r * groups + g;
    let q0 = c.base + gi * 4u;
    let vg = v0 + g * GROUP;
    var dot = 0.0;
    for (var k = 0u; k < 4u; k++) {
      let w = weight(m, q0 + k);
      for (var b = 0u; b < 8u; b++) { dot += E2M1[(w >> (4u * b)) & 15u] * input(m, vg + 8u * k + b); }
    }
    let e = (weight(m, exps + gi / 4u) >> (8u * (gi % 4u))) & 255u;
    acc += exp2(f32(e) - 127.0) * dot;
  }
  return acc;
}

