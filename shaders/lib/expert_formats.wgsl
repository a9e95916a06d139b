// The expert formats shared by the expert kernels (shaders/experts*.wgsl): the dot product of one row
// of a copy with an input row in each format (the GEMVs), and a row's weights dequantized (the tiled
// kernels). Included after expert_slots.wgsl. The including shader binds its matrices and defines
// `weight(m, i)` (word i of its matrix m) and `input(m, i)` (element i of the input its matrix m
// multiplies); m is a constant at every GEMV call site, so those switches fold away.
// Formats of the high and the low tier (the same when there is one tier).
override HI_FMT: u32 = 0u;
override LO_FMT: u32 = 0u;
const BF16: u32 = 0u;
const INT8: u32 = 1u;
const INT4: u32 = 2u;
const MXFP4: u32 = 3u;
const GROUP: u32 = 32u;

// The f32 of an e2m1 code (sign in bit 3, exponent in bits 1…2, mantissa in bit 0): 0, 0.5, 1, 1.5, 2,
// 3, 4, 6 and their negatives. Built from bits, since indexing a constant array per code is slow.
fn e2m1(c: u32) -> f32 {
  let e = (c >> 1u) & 3u;
  let m = c & 1u;
  let mag = select(((e + 126u) << 23u) | (m << 22u), m * 0x3f000000u, e == 0u);
  return bitcast<f32>(mag | ((c & 8u) << 28u));
}

// The f16 at half-word `idx` of a pair of halves `w` (its word): the low half when idx is even.
fn half_of(w: u32, idx: u32) -> f32 {
  let v = unpack2x16float(w);
  return select(v.x, v.y, (idx & 1u) == 1u);
}

// Half-word `idx` (an f16) of the halves starting at word `at` of matrix m's buffer.
fn half_at(m: u32, at: u32, idx: u32) -> f32 {
  return half_of(weight(m, at + idx / 2u), idx);
}

// Where an int4 copy of n weights from word `base` keeps its f16 scales (.x) and its f16 minimums (.y),
// as word indices: after the codes, one of each per group of 32 (src/quant/formats.ts matrixLayout).
fn int4_regions(base: u32, n: u32) -> vec2<u32> {
  let scales = base + n / 8u;
  return vec2<u32>(scales, scales + (n / GROUP + 1u) / 2u);
}

// The int4 codes of word w as f32, columns 0…3 (lo) and 4…7 (hi): code k sits at bits 4k.
fn int4_lo(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<u32>(w, w >> 4u, w >> 8u, w >> 12u) & vec4<u32>(15u));
}

fn int4_hi(w: u32) -> vec4<f32> {
  return vec4<f32>(vec4<u32>(w >> 16u, w >> 20u, w >> 24u, w >> 28u) & vec4<u32>(15u));
}

// The 32 inputs of one group of 32 columns, four to a vec4.
struct Group32 {
  x0: vec4<f32>,
  x1: vec4<f32>,
  x2: vec4<f32>,
  x3: vec4<f32>,
  x4: vec4<f32>,
  x5: vec4<f32>,
  x6: vec4<f32>,
  x7: vec4<f32>,
}

// One int4 group (q: its 32 codes, four words) against its inputs: (Σ code · x, Σ x). The group's weights
// are code · scale + minimum, so its share of a dot product is scale · .x + minimum · .y.
fn int4_group(q: vec4<u32>, x: Group32) -> vec2<f32> {
  let codes = ((dot(int4_lo(q.x), x.x0) + dot(int4_hi(q.x), x.x1)) + (dot(int4_lo(q.y), x.x2) +
    dot(int4_hi(q.y), x.x3))) + ((dot(int4_lo(q.z), x.x4) + dot(int4_hi(q.z), x.x5)) + (dot(int4_lo(q.w), x.x6) +
    dot(int4_hi(q.w), x.x7)));
  return vec2<f32>(codes, dot(((x.x0 + x.x1) + (x.x2 + x.x3)) + ((x.x4 + x.x5) + (x.x6 + x.x7)), vec4<f32>(1.0)));
}

// Columns per u32 word of a format: two bf16 weights, four int8 codes, eight int4 or e2m1 codes.
fn per_word(fmt: u32) -> u32 {
  if (fmt == BF16) { return 2u; }
  if (fmt == INT8) { return 4u; }
  return 8u;
}

// The input values one word of format `fmt` multiplies, from element v of matrix m's input: per_word of
// them in a, then b, and their sum (which int4's minimum multiplies). A workgroup loads them once per word
// for all the rows it computes, since reloading them per row costs more than the weights do.
struct Xs {
  a: vec4<f32>,
  b: vec4<f32>,
  sum: f32,
}

fn load_x(m: u32, fmt: u32, v: u32) -> Xs {
  var xs = Xs(vec4<f32>(input(m, v), input(m, v + 1u), 0.0, 0.0), vec4<f32>(0.0), 0.0);
  if (fmt == BF16) { return xs; }
  xs.a.z = input(m, v + 2u);
  xs.a.w = input(m, v + 3u);
  if (fmt == INT8) { return xs; }
  xs.b = vec4<f32>(input(m, v + 4u), input(m, v + 5u), input(m, v + 6u), input(m, v + 7u));
  if (fmt == INT4) { xs.sum = dot(xs.a + xs.b, vec4<f32>(1.0)); }
  return xs;
}

// Σ over word j of row r of W · xs, W ([rows, cols]) being the copy of matrix m that starts at word
// `base` in format `fmt`: the word's weights dequantized with their group's scale (and minimum). Thread j
// of a workgroup takes words j, j + WG, … of each row, so neighbouring threads read neighbouring words
// (coalesced) in every format, and a group's scale is read beside its words. `fmt` is HI_FMT or LO_FMT at
// every call site, so the other formats' branches fold away.
fn word_dot(m: u32, fmt: u32, base: u32, rows: u32, cols: u32, r: u32, j: u32, xs: Xs) -> f32 {
  if (fmt == BF16) {
    let w = weight(m, base + r * (cols / 2u) + j);
    return bf16_lo(w) * xs.a.x + bf16_hi(w) * xs.a.y;
  }
  let n = rows * cols;
  let g0 = r * (cols / GROUP);
  if (fmt == INT8) {
    let w = weight(m, base + r * (cols / 4u) + j);
    let q = vec4<f32>(f32(i32(w << 24u) >> 24u), f32(i32(w << 16u) >> 24u), f32(i32(w << 8u) >> 24u), f32(i32(w) >> 24u));
    return half_at(m, base + n / 4u, g0 + j / 8u) * dot(q, xs.a);
  }
  let w = weight(m, base + r * (cols / 8u) + j);
  let g = g0 + j / 4u;
  if (fmt == INT4) {
    let at = int4_regions(base, n);
    let codes = dot(int4_lo(w), xs.a) + dot(int4_hi(w), xs.b);
    return half_at(m, at.x, g) * codes + half_at(m, at.y, g) * xs.sum;
  }
  // MXFP4
  let lo = vec4<f32>(e2m1(w & 15u), e2m1((w >> 4u) & 15u), e2m1((w >> 8u) & 15u), e2m1((w >> 12u) & 15u));
  let hi = vec4<f32>(e2m1((w >> 16u) & 15u), e2m1((w >> 20u) & 15u), e2m1((w >> 24u) & 15u), e2m1(w >> 28u));
  let e = (weight(m, base + n / 8u + g / 4u) >> (8u * (g % 4u))) & 255u;
  return exp2(f32(e) - 127.0) * (dot(lo, xs.a) + dot(hi, xs.b));
}

// Weights c … c + 7 of row r of W ([rows, cols], the copy of matrix m that starts at word `base` in format
// `fmt`), dequantized: what the tiled kernels (lib/expert_tiles.wgsl) stage in workgroup memory. c is a
// multiple of 8, so the eight share one group of 32; rows past `rows` and columns past `cols` (bf16, whose
// rows need not fill a group) read 0. Each weight is the f32 the formats define (code · scale, + minimum
// for int4), rounded once, as src/quant/formats.ts `dequantizeMatrix` computes it.
struct Octet {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// Eight bf16 weights (four words) as f32.
fn bf16_octet(w: vec4<u32>) -> Octet {
  return Octet(vec4<f32>(bf16_lo(w.x), bf16_hi(w.x), bf16_lo(w.y), bf16_hi(w.y)),
               vec4<f32>(bf16_lo(w.z), bf16_hi(w.z), bf16_lo(w.w), bf16_hi(w.w)));
}

fn octet(m: u32, fmt: u32, base: u32, rows: u32, cols: u32, r: u32, c: u32) -> Octet {
  var o = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
  if (r >= rows || c >= cols) { return o; }
  if (fmt == BF16) {
    // two weights a word; a row holds cols / 2 words (cols is even)
    let at = base + (r * cols + c) / 2u;
    var w = vec4<u32>(0u);
    if (c + 8u <= cols) {
      w = vec4<u32>(weight(m, at), weight(m, at + 1u), weight(m, at + 2u), weight(m, at + 3u));
    } else {
      for (var q = 0u; q < min(cols - c, 8u) / 2u; q++) { w[q] = weight(m, at + q); }
    }
    return bf16_octet(w);
  }
  let n = rows * cols;
  let g = (r * cols + c) / GROUP;
  if (fmt == INT8) {
    let at = base + (r * cols + c) / 4u;
    let s = half_at(m, base + n / 4u, g);
    let w0 = weight(m, at);
    let w1 = weight(m, at + 1u);
    o.lo = s * vec4<f32>(f32(i32(w0 << 24u) >> 24u), f32(i32(w0 << 16u) >> 24u), f32(i32(w0 << 8u) >> 24u), f32(i32(w0) >> 24u));
    o.hi = s * vec4<f32>(f32(i32(w1 << 24u) >> 24u), f32(i32(w1 << 16u) >> 24u), f32(i32(w1 << 8u) >> 24u), f32(i32(w1) >> 24u));
    return o;
  }
  let w = weight(m, base + (r * cols + c) / 8u);
  if (fmt == INT4) {
    let at = int4_regions(base, n);
    let s = half_at(m, at.x, g);
    let mn = half_at(m, at.y, g);
    o.lo = int4_lo(w) * s + mn;
    o.hi = int4_hi(w) * s + mn;
    return o;
  }
  // MXFP4: the scale 2^(e − 127) built from its bits (e = 0 is the subnormal 2^−127)
  let e = (weight(m, base + n / 8u + g / 4u) >> (8u * (g % 4u))) & 255u;
  let s = select(bitcast<f32>(e << 23u), bitcast<f32>(0x00400000u), e == 0u);
  o.lo = s * vec4<f32>(e2m1(w & 15u), e2m1((w >> 4u) & 15u), e2m1((w >> 8u) & 15u), e2m1((w >> 12u) & 15u));
  o.hi = s * vec4<f32>(e2m1((w >> 16u) & 15u), e2m1((w >> 20u) & 15u), e2m1((w >> 24u) & 15u), e2m1(w >> 28u));
  return o;
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

// The bias of row r of copy `c` (of a [rows, cols] matrix m): `rows` bf16 values after the matrix's
// other regions (gpt-oss's experts), read in the copy's tier's format.
fn copy_bias(m: u32, c: Copy, rows: u32, cols: u32, r: u32) -> f32 {
  var at = c.base + bias_word(HI_FMT, rows, cols);
  if (c.tier != 0u) { at = c.base + bias_word(LO_FMT, rows, cols); }
  let w = weight(m, at + r / 2u);
  return select(bf16_lo(w), bf16_hi(w), (r & 1u) == 1u);
}
