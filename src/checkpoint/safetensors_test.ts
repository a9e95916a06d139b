import assert from "node:assert/strict";
import { CheckpointError } from "../errors.ts";
import { DTYPE_BYTES, MAX_HEADER_BYTES, parseSafetensorsHeader, SafetensorsFile } from "./safetensors.ts";

// ---- a tiny safetensors writer -------------------------------------------------------------------------

interface TensorSpec {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Builds a file from a header given as text, data bytes, and optionally a lying header length. */
function raw(header: string, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Uint8Array {
  const headerBytes = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + headerBytes.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(data, 8 + headerBytes.length);
  return out;
}

/** Builds a valid file: tensors laid out back to back in the given order, header padded to 8 bytes. */
function build(tensors: Record<string, TensorSpec>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, spec] of Object.entries(tensors)) {
    header[name] = {
      dtype: spec.dtype,
      shape: spec.shape,
      data_offsets: [offset, offset + spec.data.length],
    };
    offset += spec.data.length;
  }
  const data = new Uint8Array(offset);
  offset = 0;
  for (const spec of Object.values(tensors)) {
    data.set(spec.data, offset);
    offset += spec.data.length;
  }
  let text = JSON.stringify(header);
  text += " ".repeat((8 - text.length % 8) % 8);
  return raw(text, data);
}

/** Builds a file from a header object and a data section of `dataSize` zero bytes. */
function fromHeader(header: Record<string, unknown>, dataSize: number): Uint8Array {
  return raw(JSON.stringify(header), new Uint8Array(dataSize));
}

function bf16(values: number[]): Uint8Array {
  const f32 = new Float32Array(values);
  const u32 = new Uint32Array(f32.buffer);
  const out = new Uint8Array(values.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setUint16(i * 2, (u32[i] ?? 0) >>> 16, true);
  return out;
}

function f32(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

function parse(file: Uint8Array) {
  return parseSafetensorsHeader(file, file.length, "test.safetensors");
}

/** Asserts that parsing `file` throws a CheckpointError naming the file, whose message matches. */
function assertInvalid(file: Uint8Array, message: RegExp): void {
  assert.throws(
    () => parse(file),
    (error: unknown) => {
      assert.ok(error instanceof CheckpointError, String(error));
      assert.equal(error.file, "test.safetensors");
      assert.match(error.message, message);
      assert.ok(error.message.endsWith(" (in test.safetensors)"), error.message);
      return true;
    },
  );
}

async function withTempDir(fn: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe_safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---- valid headers -------------------------------------------------------------------------------------

Deno.test("DTYPE_BYTES gives the element size of every dtype", () => {
  assert.equal(Object.keys(DTYPE_BYTES).length, 15);
  assert.equal(DTYPE_BYTES.BF16, 2);
  assert.equal(DTYPE_BYTES.F8_E4M3, 1);
  assert.equal(DTYPE_BYTES.U64, 8);
  assert.equal(DTYPE_BYTES.BOOL, 1);
});

Deno.test("parseSafetensorsHeader reads tensors, metadata and offsets", () => {
  const file = build({
    "b.weight": { dtype: "F32", shape: [2, 2], data: f32([1, 2, 3, 4]) },
    "a.weight": { dtype: "BF16", shape: [3], data: bf16([1, -2, 0.5]) },
    "scalar": { dtype: "I64", shape: [], data: new Uint8Array(8) },
    "empty": { dtype: "F16", shape: [0, 5], data: new Uint8Array(0) },
  }, { format: "pt", note: "x" });
  const header = parse(file);
  const headerLength = Number(new DataView(file.buffer).getBigUint64(0, true));
  assert.equal(header.dataStart, 8 + headerLength);
  assert.deepEqual({ ...header.metadata }, { format: "pt", note: "x" });
  // Sorted by offset; a zero-size tensor sorts before a sized one at the same offset.
  assert.deepEqual(header.tensors.map((t) => t.name), ["b.weight", "a.weight", "scalar", "empty"]);
  assert.deepEqual(header.tensors[1], {
    name: "a.weight",
    dtype: "BF16",
    shape: [3],
    file: "test.safetensors",
    byteOffset: header.dataStart + 16,
    byteLength: 6,
  });
  assert.deepEqual(header.tensors[2]?.shape, []);
  assert.equal(header.tensors[3]?.byteLength, 0);
  assert.ok(Object.isFrozen(header.tensors[0]));
});

Deno.test("parseSafetensorsHeader accepts an empty header and no metadata", () => {
  const header = parse(raw("{}"));
  assert.deepEqual(header.tensors, []);
  assert.deepEqual({ ...header.metadata }, {});
  assert.equal(header.dataStart, 10);
  // Metadata is a prototype-free object: "__proto__" is an ordinary key.
  const odd = parse(raw(`{"__metadata__":{"__proto__":"p"}}`));
  assert.equal(odd.metadata["__proto__"], "p");
  assert.equal(odd.metadata["toString"], undefined);
});

Deno.test("parseSafetensorsHeader accepts a buffer holding only the header", () => {
  const file = build({ w: { dtype: "U8", shape: [100], data: new Uint8Array(100) } });
  const header = parseSafetensorsHeader(file.subarray(0, file.length - 100), file.length, "x");
  assert.equal(header.tensors[0]?.byteLength, 100);
  assert.throws(
    () => parseSafetensorsHeader(file.subarray(0, 12), file.length, "x"),
    /Header bytes missing/,
  );
});

// ---- invalid headers -----------------------------------------------------------------------------------

Deno.test("parseSafetensorsHeader refuses files shorter than 8 bytes", () => {
  assertInvalid(new Uint8Array(0), /^File too small for a safetensors header: 0 bytes, need at least 8/);
  assertInvalid(new Uint8Array(7), /^File too small for a safetensors header: 7 bytes/);
});

Deno.test("parseSafetensorsHeader refuses an absurd header length", () => {
  assertInvalid(
    raw("{}", new Uint8Array(0), BigInt(MAX_HEADER_BYTES) + 1n),
    /^Header length too large: 100000001 bytes/,
  );
  assertInvalid(raw("{}", new Uint8Array(0), 0xffff_ffff_ffff_ffffn), /^Header length too large/);
});

Deno.test("parseSafetensorsHeader refuses a header length past the end of the file", () => {
  assertInvalid(
    raw("{}", new Uint8Array(0), 1000n),
    /^Header extends past end of file: it ends at byte 1008, file is 10 bytes/,
  );
});

Deno.test("parseSafetensorsHeader refuses a header that is not a UTF-8 JSON object", () => {
  assertInvalid(raw("not json"), /^Header is not a JSON object: it must start with "{"/);
  assertInvalid(raw("{not json}"), /^Header is not valid JSON: /);
  assertInvalid(raw(`{"a": 1`), /^Header is not valid JSON: /);
  assertInvalid(raw("[1, 2]"), /^Header is not a JSON object: it must start/);
  assertInvalid(raw(" {}"), /must start with "{"/);
  assertInvalid(raw("\uFEFF{}"), /must start with "{"/);
  const badUtf8 = raw("{}  ");
  badUtf8[9] = 0xff;
  assertInvalid(badUtf8, /^Header is not valid UTF-8/);
  assertInvalid(raw("{}\0\0"), /^Header is not valid JSON/);
});

Deno.test("parseSafetensorsHeader refuses malformed __metadata__", () => {
  assertInvalid(
    fromHeader({ __metadata__: ["x"] }, 0),
    /^Invalid __metadata__: expected an object, got array/,
  );
  assertInvalid(
    fromHeader({ __metadata__: { format: "pt", n: 1 } }, 0),
    /^Invalid __metadata__: "n" must be a string, got number/,
  );
});

Deno.test("parseSafetensorsHeader refuses unknown or missing keys in a tensor entry", () => {
  assertInvalid(
    fromHeader({ w: { dtype: "U8", shape: [4], data_offsets: [0, 4], extra: 1 } }, 4),
    /^Unknown key in tensor entry: "w" has "extra", expected only dtype, shape and data_offsets/,
  );
  assertInvalid(
    fromHeader({ w: { dtype: "U8", data_offsets: [0, 4] } }, 4),
    /^Missing key in tensor entry: "w" has no "shape"/,
  );
  assertInvalid(fromHeader({ w: "U8" }, 0), /^Invalid tensor entry: "w" must be an object, got string/);
  assertInvalid(fromHeader({ w: null }, 0), /^Invalid tensor entry: "w" must be an object, got null/);
});

Deno.test("parseSafetensorsHeader refuses unknown dtypes", () => {
  assertInvalid(
    fromHeader({ w: { dtype: "Q4_K", shape: [4], data_offsets: [0, 4] } }, 4),
    /^Unknown dtype: "w" has dtype "Q4_K", expected one of BOOL, U8, /,
  );
  assertInvalid(fromHeader({ w: { dtype: "bf16", shape: [2], data_offsets: [0, 4] } }, 4), /Unknown dtype/);
  assertInvalid(
    fromHeader({ w: { dtype: "toString", shape: [4], data_offsets: [0, 4] } }, 4),
    /Unknown dtype/,
  );
  assertInvalid(fromHeader({ w: { dtype: 2, shape: [4], data_offsets: [0, 4] } }, 4), /Unknown dtype/);
});

Deno.test("parseSafetensorsHeader refuses negative, fractional or non-numeric dimensions", () => {
  for (const shape of [[-1, 4], [1.5], ["4"], [null], [2 ** 53], "4", { 0: 4 }]) {
    assertInvalid(
      fromHeader({ w: { dtype: "U8", shape, data_offsets: [0, 4] } }, 4),
      /^Invalid shape: "w" has shape .*, expected an array of non-negative integers/,
    );
  }
});

Deno.test("parseSafetensorsHeader refuses malformed data_offsets", () => {
  for (const offsets of [[4, 0], [0], [0, 4, 8], [-4, 0], [0, 4.5], ["0", "4"], null]) {
    assertInvalid(
      fromHeader({ w: { dtype: "U8", shape: [4], data_offsets: offsets } }, 8),
      /^Invalid data_offsets: "w" has .*, expected \[begin, end\]/,
    );
  }
});

Deno.test("parseSafetensorsHeader refuses offsets past the data section", () => {
  assertInvalid(
    fromHeader({ w: { dtype: "U8", shape: [8], data_offsets: [4, 12] } }, 10),
    /^Tensor data out of bounds: "w" ends at data offset 12, data section is 10 bytes/,
  );
});

Deno.test("parseSafetensorsHeader refuses a shape whose size differs from the offsets", () => {
  assertInvalid(
    fromHeader({ w: { dtype: "F32", shape: [2, 3], data_offsets: [0, 20] } }, 20),
    /^Tensor size mismatch: "w" is F32 \[2, 3\], 24 bytes, but data_offsets span 20 bytes/,
  );
  // Far too large a shape is a mismatch too, computed without overflow.
  assertInvalid(
    fromHeader({ w: { dtype: "U64", shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, 8),
    /^Tensor size mismatch: "w" is U64 \[1099511627776, 1099511627776\], 9671406556917033397649408 bytes/,
  );
});

Deno.test("parseSafetensorsHeader refuses overlapping tensors", () => {
  assertInvalid(
    fromHeader({
      a: { dtype: "U8", shape: [8], data_offsets: [0, 8] },
      b: { dtype: "U8", shape: [8], data_offsets: [4, 12] },
    }, 12),
    /^Overlapping tensors: "b" starts at data offset 4, inside "a" \(data offsets 0\.\.8\)/,
  );
  // The same range twice.
  assertInvalid(
    fromHeader({
      a: { dtype: "U8", shape: [8], data_offsets: [0, 8] },
      b: { dtype: "U8", shape: [8], data_offsets: [0, 8] },
    }, 8),
    /^Overlapping tensors/,
  );
  // An empty tensor inside another one.
  assertInvalid(
    fromHeader({
      a: { dtype: "U8", shape: [8], data_offsets: [0, 8] },
      z: { dtype: "U8", shape: [0], data_offsets: [4, 4] },
    }, 8),
    /^Overlapping tensors: "z" starts at data offset 4/,
  );
});

Deno.test("parseSafetensorsHeader refuses gaps and unused bytes in the data section", () => {
  assertInvalid(
    fromHeader({
      a: { dtype: "U8", shape: [4], data_offsets: [0, 4] },
      b: { dtype: "U8", shape: [4], data_offsets: [8, 12] },
    }, 12),
    /^Gap in tensor data: data offsets 4\.\.8 belong to no tensor \(before "b"\)/,
  );
  assertInvalid(
    fromHeader({ b: { dtype: "U8", shape: [4], data_offsets: [2, 6] } }, 6),
    /^Gap in tensor data: data offsets 0\.\.2/,
  );
  assertInvalid(
    fromHeader({ a: { dtype: "U8", shape: [4], data_offsets: [0, 4] } }, 6),
    /^Unused bytes after tensor data: tensors end at data offset 4, data section is 6 bytes/,
  );
  assertInvalid(
    raw("{}", new Uint8Array(3)),
    /^Unused bytes after tensor data: tensors end at data offset 0/,
  );
});

Deno.test("parseSafetensorsHeader detects a duplicated key through the gap it leaves", () => {
  // JSON.parse keeps the last of two equal keys; the first one's bytes are then covered by no tensor.
  const header = `{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},` +
    `"w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`;
  assertInvalid(raw(header, new Uint8Array(8)), /^Gap in tensor data: data offsets 0\.\.4/);
});

// ---- SafetensorsFile -----------------------------------------------------------------------------------

Deno.test("SafetensorsFile maps a file and returns tensors zero-copy", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/model.safetensors`;
    const values = [1, -2, 0.5, 3.140625, -0.0078125, 65280];
    Deno.writeFileSync(
      path,
      build({
        "model.norm.weight": { dtype: "F32", shape: [2], data: f32([0.25, -8]) },
        "model.embed_tokens.weight": { dtype: "BF16", shape: [2, 3], data: bf16(values) },
      }, { format: "pt" }),
    );
    using file = SafetensorsFile.open(path);
    assert.equal(file.path, path);
    assert.equal(file.byteLength, Deno.statSync(path).size);
    assert.deepEqual({ ...file.metadata }, { format: "pt" });
    assert.deepEqual([...file.tensors.keys()], ["model.norm.weight", "model.embed_tokens.weight"]);
    assert.ok(file.has("model.norm.weight"));
    assert.ok(!file.has("nope"));

    const info = file.info("model.embed_tokens.weight");
    assert.equal(info.dtype, "BF16");
    assert.deepEqual(info.shape, [2, 3]);
    assert.equal(info.file, path);
    assert.equal(info.byteLength, 12);

    const bytes = file.bytes("model.embed_tokens.weight");
    assert.equal(bytes.byteOffset, info.byteOffset);
    assert.equal(bytes.buffer.byteLength, file.byteLength); // a view into the whole mapping: no copy
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const decoded = values.map((_, i) => {
      const widened = new DataView(new ArrayBuffer(4));
      widened.setUint32(0, view.getUint16(i * 2, true) << 16);
      return widened.getFloat32(0);
    });
    assert.deepEqual(decoded, values);

    const norm = file.bytes("model.norm.weight");
    assert.deepEqual([...new Float32Array(norm.slice().buffer)], [0.25, -8]);
    file.advise("model.norm.weight", "willneed");

    assert.throws(
      () => file.bytes("nope"),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === path &&
        error.message === `Missing tensor: "nope" (in ${path})`,
    );
  });
});

Deno.test("SafetensorsFile.close is idempotent and later reads fail", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/model.safetensors`;
    Deno.writeFileSync(path, build({ w: { dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) } }));
    const file = SafetensorsFile.open(path);
    const view = file.bytes("w");
    assert.deepEqual([...view], [1, 2, 3]);
    file.close();
    file.close();
    assert.equal(file.closed, true);
    assert.equal(view.length, 0);
    assert.throws(() => file.bytes("w"), /Mapped file is closed/);
  });
});

Deno.test("SafetensorsFile.open refuses empty, truncated and invalid files", async () => {
  await withTempDir((dir) => {
    const empty = `${dir}/empty.safetensors`;
    Deno.writeFileSync(empty, new Uint8Array(0));
    assert.throws(
      () => SafetensorsFile.open(empty),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === empty &&
        /^File too small for a safetensors header: 0 bytes/.test(error.message),
    );

    const whole = build({
      a: { dtype: "F32", shape: [16], data: new Uint8Array(64) },
      b: { dtype: "F32", shape: [16], data: new Uint8Array(64) },
    });
    const truncated = `${dir}/truncated.safetensors`;
    Deno.writeFileSync(truncated, whole.subarray(0, whole.length - 10));
    assert.throws(
      () => SafetensorsFile.open(truncated),
      /Tensor data out of bounds: "b" ends at data offset 128, data section is 118 bytes/,
    );
    const headerCut = `${dir}/header-cut.safetensors`;
    Deno.writeFileSync(headerCut, whole.subarray(0, 20));
    assert.throws(() => SafetensorsFile.open(headerCut), /Header extends past end of file/);

    assert.throws(() => SafetensorsFile.open(`${dir}/missing.safetensors`), /File not found/);
    // Nothing stays mapped after a refused file (Linux: visible in /proc/self/maps).
    if (Deno.build.os === "linux") assert.ok(!Deno.readTextFileSync("/proc/self/maps").includes(dir));
  });
});
