// The tiled grouped expert matmul shared by experts_tiled.wgsl (gate/up, wi) and experts_tiled_down.wgsl
// (down): a workgroup multiplies one tile of the route (up to TILE token-expert rows routed to one expert,
// listed by experts_group.wgsl) by a block of BLOCK rows of that expert's matrix, over the columns in chunks
// of BK, staging both operands in workgroup memory, so that each weight it reads serves the tile's TILE
// tokens (the GEMV kernels read an expert's weights once per token). The weights are dequantized from the
// tier's format while they are staged (expert_formats.wgsl `octet`). The including shader includes
// expert_slots.wgsl and expert_formats.wgsl first, sets every override below that has no initializer, and
// binds its matrices and input as vec4 arrays: besides `weight(m, i)` and `input(m, i)` it defines
// `weight4(m, i4)` (words 4·i4 … 4·i4 + 3 of matrix m) and `input4(m, i4)` (elements 4·i4 … 4·i4 + 3 of
// its input). Every buffer's size is a multiple of 16 bytes (src/gpu/memory.ts `allocatedSize`), so the
// vec4 arrays reach each word.
//
//   route: u32 words (experts_group.wgsl): [0] the tile count; [1, 1 + T·K) the token-expert rows tk
//          grouped by expert; from 1 + T·K three words per tile: the expert's slot-table entry, the
//          tile's first index into the grouped rows, its row count (1 … TILE)
//
// The block is two halves of BLOCK / 2 rows, which the including entry maps to its matrices (gate and up
// at the same rows, or the next BLOCK rows of one matrix). Thread (tq, rq) of the TILE / 4 × BLOCK / 8
// threads accumulates tokens 4tq … 4tq + 3 against rows 4rq … 4rq + 3 of each half: per column it reads
// three vec4s of workgroup memory for 32 multiply-adds.
override TILE: u32; //                           token-expert rows per tile, a multiple of 4
override BLOCK: u32; //                          weight rows per workgroup, a multiple of 8
override RQ: u32 = BLOCK / 8u; //                row quads per half
override THREADS: u32 = TILE / 4u * RQ;
override BK: u32; //                             columns per stage, a multiple of 8 (whole octets)
override XS_LEN: u32 = BK * TILE / 4u;
override WS_LEN: u32 = BK * BLOCK / 4u;

@group(0) @binding(11) var<storage, read> route: array<u32>;

// One stage: xs[k · TILE/4 + q] = the inputs of tokens 4q … 4q + 3 at column c0 + k; ws[k · BLOCK/4 + q] =
// the weights of block rows 4q … 4q + 3 at column c0 + k. With TILE 64, BLOCK 128 and BK 16: 4 + 8 KiB.
var<workgroup> xs: array<vec4<f32>, XS_LEN>;
var<workgroup> ws: array<vec4<f32>, WS_LEN>;
// The tile's token-expert rows tk, in its order.
var<workgroup> tile_tk: array<u32, TILE>;

// A workgroup's work: a tile (its slot-table entry and rows) and a block of weight rows.
struct Tile {
  entry: i32,
  first: u32,
  count: u32,
  block: u32,
}

// Workgroup `lin` of a dispatch of (tile bound) × `blocks`: tile lin / blocks, block lin % blocks (the blocks
// of a tile are neighbours, and so are the tiles of an expert: its weights stay in cache between them).
// count = 0 past the route's last tile: the dispatch is sized for the most tiles any routing makes.
fn tile_at(lin: u32, blocks: u32) -> Tile {
  let i = lin / blocks;
  if (i >= route[0]) { return Tile(-1, 0u, 0u, 0u); }
  let at = 1u + step.t * p.top_k + 3u * i;
  return Tile(bitcast<i32>(route[at]), route[at + 1u], route[at + 2u], lin % blocks);
}

// Stages the tile's rows in tile_tk (every thread calls it).
fn stage_rows(t: Tile, tid: u32) {
  for (var j = tid; j < t.count; j += THREADS) { tile_tk[j] = route[1u + t.first + j]; }
  workgroupBarrier();
}

// Where the block's rows come from: block row r < BLOCK / 2 is row r0 + r of matrix m0, the others row
// r1 + r − BLOCK / 2 of matrix m1.
struct Halves {
  m0: u32,
  r0: u32,
  m1: u32,
  r1: u32,
}

// acc[i] and acc[4 + i]: token 4tq + i of the tile against rows 4rq … 4rq + 3 of the first and the second half.
struct Acc {
  v: array<vec4<f32>, 8>,
}

// Σ over the columns of (the tile's inputs) × (the block's rows), this thread's 4 × 8 share. The copy starts
// at word `base` in format `fmt` (HI_FMT or LO_FMT at every call site), its matrices are [rows, cols]; token
// slot j reads input row tile_tk[j] / per_row of the input [·, cols] (per_row = K when the input is x, 1
// when it is h). Sums each output over the columns in order, in f32.
fn tile_matmul(fmt: u32, base: u32, hv: Halves, rows: u32, cols: u32, count: u32, per_row: u32, tid: u32) -> Acc {
  let tq = tid / RQ;
  let rq = tid % RQ;
  let half = BLOCK / 2u;
  var acc = Acc();
  // Where the columns come in whole quads, each thread loads its input quad and (bf16) its weight octet as
  // one vec4 each: four scalar loads of neighbouring words, or a loop over them, cost 1.2–1.4 × the time
  // (bench/kernels.ts, H200). Uniform across the workgroup.
  let x_quads = cols % 4u == 0u;
  let w_quads = fmt == BF16 && cols % 8u == 0u && base % 4u == 0u;
  for (var c0 = 0u; c0 < cols; c0 += BK) {
    // TILE · BK / 4 quads (four neighbouring columns of one token's input)
    for (var s = tid; s < TILE * (BK / 4u); s += THREADS) {
      let j = s / (BK / 4u);
      let k0 = 4u * (s % (BK / 4u));
      var v = vec4<f32>(0.0);
      if (j < count && c0 + k0 < cols) {
        let at = (tile_tk[j] / per_row) * cols + c0 + k0;
        if (x_quads) {
          v = input4(hv.m0, at / 4u);
        } else {
          for (var i = 0u; i < min(cols - c0 - k0, 4u); i++) { v[i] = input(hv.m0, at + i); }
        }
      }
      let xq = k0 * (TILE / 4u) + j / 4u;
      xs[xq][j % 4u] = v.x;
      xs[xq + TILE / 4u][j % 4u] = v.y;
      xs[xq + 2u * (TILE / 4u)][j % 4u] = v.z;
      xs[xq + 3u * (TILE / 4u)][j % 4u] = v.w;
    }
    // BLOCK · BK / 8 octets (a row's eight neighbouring columns), dequantized
    for (var o = tid; o < BLOCK * (BK / 8u); o += THREADS) {
      let r = o / (BK / 8u);
      let k0 = 8u * (o % (BK / 8u));
      // block row r: row r0 + r of matrix m0, or row r1 + r − half of matrix m1
      let m = select(hv.m1, hv.m0, r < half);
      let row = select(hv.r1 + r - half, hv.r0 + r, r < half);
      var w = Octet(vec4<f32>(0.0), vec4<f32>(0.0));
      if (w_quads) {
        if (row < rows && c0 + k0 < cols) {
          w = bf16_octet(weight4(m, (base + (row * cols + c0 + k0) / 2u) / 4u));
        }
      } else {
        w = octet(m, fmt, base, rows, cols, row, c0 + k0);
      }
      let wq = k0 * (BLOCK / 4u) + r / 4u;
      let c = r % 4u;
      ws[wq][c] = w.lo.x;
      ws[wq + BLOCK / 4u][c] = w.lo.y;
      ws[wq + 2u * (BLOCK / 4u)][c] = w.lo.z;
      ws[wq + 3u * (BLOCK / 4u)][c] = w.lo.w;
      ws[wq + 4u * (BLOCK / 4u)][c] = w.hi.x;
      ws[wq + 5u * (BLOCK / 4u)][c] = w.hi.y;
      ws[wq + 6u * (BLOCK / 4u)][c] = w.hi.z;
      ws[wq + 7u * (BLOCK / 4u)][c] = w.hi.w;
    }
    workgroupBarrier();
    // threads whose four tokens are past the tile's rows skip (a tile is often part full): whole warps
    // of them when threads of neighbouring indices share token quads
    for (var k = 0u; k < select(0u, BK, 4u * tq < count); k++) {
      let a = xs[k * (TILE / 4u) + tq];
      let b0 = ws[k * (BLOCK / 4u) + rq];
      let b1 = ws[k * (BLOCK / 4u) + RQ + rq];
      acc.v[0] += a.x * b0;
      acc.v[1] += a.y * b0;
      acc.v[2] += a.z * b0;
      acc.v[3] += a.w * b0;
      acc.v[4] += a.x * b1;
      acc.v[5] += a.y * b1;
      acc.v[6] += a.z * b1;
      acc.v[7] += a.w * b1;
    }
    workgroupBarrier();
  }
  return acc;
}
