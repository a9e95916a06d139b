import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { CheckpointError } from "../errors.ts";
import { Checkpoint, INDEX_FILE, SINGLE_FILE } from "./shards.ts";

const TINY_MIXTRAL = fileURLToPath(new URL("../../tests/fixtures/tiny-mixtral", import.meta.url));

// ---- a tiny safetensors writer -------------------------------------------------------------------------

/** Builds a safetensors file of U8 tensors, each filled with its own byte value. */
function shard(tensors: Record<string, { length: number; fill: number }>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const [name, { length }] of Object.entries(tensors)) {
    header[name] = { dtype: "U8", shape: [length], data_offsets: [offset, offset + length] };
    offset += length;
  }
  const headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const { length, fill } of Object.values(tensors)) {
    out.fill(fill, at, at + length);
    at += length;
  }
  return out;
}

function writeIndex(dir: string, weightMap: unknown, extra: Record<string, unknown> = {}): void {
  Deno.writeTextFileSync(
    `${dir}/${INDEX_FILE}`,
    JSON.stringify({ metadata: {}, weight_map: weightMap, ...extra }),
  );
}

/** A valid two-shard checkpoint: a.safetensors holds x and y, b.safetensors holds z. */
function writeTwoShards(dir: string): void {
  Deno.writeFileSync(`${dir}/a.safetensors`, shard({ x: { length: 4, fill: 1 }, y: { length: 6, fill: 2 } }));
  Deno.writeFileSync(`${dir}/b.safetensors`, shard({ z: { length: 3, fill: 3 } }));
}

async function withTempDir(fn: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe_shards_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts that opening `dir` throws a CheckpointError whose message matches, and maps nothing. */
function assertRefused(dir: string, message: RegExp, file?: string): void {
  assert.throws(
    () => Checkpoint.open(dir),
    (error: unknown) => {
      assert.ok(error instanceof CheckpointError, String(error));
      assert.match(error.message, message);
      if (file !== undefined) assert.equal(error.file, file);
      return true;
    },
  );
  if (Deno.build.os === "linux") {
    assert.ok(!Deno.readTextFileSync("/proc/self/maps").includes(dir), "a shard stayed mapped");
  }
}

// ---- the real fixture ----------------------------------------------------------------------------------

Deno.test("Checkpoint opens the sharded tiny-mixtral fixture and lists every tensor", () => {
  const index = JSON.parse(Deno.readTextFileSync(`${TINY_MIXTRAL}/${INDEX_FILE}`));
  const weightMap = index.weight_map as Record<string, string>;
  using checkpoint = Checkpoint.open(TINY_MIXTRAL);
  assert.equal(checkpoint.dir, TINY_MIXTRAL);
  assert.deepEqual(checkpoint.files, [
    `${TINY_MIXTRAL}/model-00001-of-00002.safetensors`,
    `${TINY_MIXTRAL}/model-00002-of-00002.safetensors`,
  ]);
  assert.deepEqual([...checkpoint.tensors.keys()].sort(), Object.keys(weightMap).sort());
  for (const [name, file] of Object.entries(weightMap)) {
    assert.equal(checkpoint.info(name).file, `${TINY_MIXTRAL}/${file}`);
  }
  assert.equal(checkpoint.totalBytes, index.metadata.total_size);

  const name = "model.layers.0.block_sparse_moe.experts.0.w1.weight";
  assert.ok(checkpoint.has(name));
  const info = checkpoint.info(name);
  assert.equal(info.dtype, "BF16");
  assert.deepEqual(info.shape, [128, 64]);
  assert.equal(info.byteLength, 128 * 64 * 2);

  // The zero-copy view holds the same bytes as the file.
  const bytes = checkpoint.bytes(name);
  assert.equal(bytes.length, info.byteLength);
  const onDisk = Deno.readFileSync(info.file).subarray(info.byteOffset, info.byteOffset + info.byteLength);
  assert.deepEqual(bytes, onDisk);
  assert.ok(bytes.some((b) => b !== 0));
  checkpoint.advise(name, "willneed");
});

// ---- unsharded and missing -----------------------------------------------------------------------------

Deno.test("Checkpoint opens a single model.safetensors", async () => {
  await withTempDir((dir) => {
    Deno.writeFileSync(
      `${dir}/${SINGLE_FILE}`,
      shard({ w: { length: 5, fill: 9 }, v: { length: 2, fill: 8 } }),
    );
    using checkpoint = Checkpoint.open(dir);
    assert.deepEqual(checkpoint.files, [`${dir}/${SINGLE_FILE}`]);
    assert.deepEqual([...checkpoint.tensors.keys()], ["w", "v"]);
    assert.equal(checkpoint.totalBytes, 7);
    assert.deepEqual([...checkpoint.bytes("w")], [9, 9, 9, 9, 9]);
    assert.deepEqual([...checkpoint.bytes("v")], [8, 8]);
  });
});

Deno.test("Checkpoint prefers the index over model.safetensors", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", y: "a.safetensors", z: "b.safetensors" });
    Deno.writeFileSync(`${dir}/${SINGLE_FILE}`, shard({ other: { length: 1, fill: 0 } }));
    using checkpoint = Checkpoint.open(dir);
    assert.deepEqual([...checkpoint.tensors.keys()], ["x", "y", "z"]);
    assert.deepEqual([...checkpoint.bytes("z")], [3, 3, 3]);
  });
});

Deno.test("Checkpoint.open refuses a folder without weights, and a missing folder", async () => {
  await withTempDir((dir) => {
    assertRefused(
      dir,
      /^No weights found: looked for model\.safetensors\.index\.json and model\.safetensors/,
      dir,
    );
    assertRefused(`${dir}/nope`, /^Checkpoint folder not found/, `${dir}/nope`);
    Deno.writeTextFileSync(`${dir}/file`, "");
    assertRefused(`${dir}/file`, /^Not a folder/);
  });
});

Deno.test("Checkpoint reports a missing tensor naming the folder", async () => {
  await withTempDir((dir) => {
    Deno.writeFileSync(`${dir}/${SINGLE_FILE}`, shard({ w: { length: 1, fill: 0 } }));
    using checkpoint = Checkpoint.open(dir);
    assert.equal(checkpoint.has("missing"), false);
    for (const call of [() => checkpoint.info("missing"), () => checkpoint.bytes("missing")]) {
      assert.throws(call, (error: unknown) =>
        error instanceof CheckpointError && error.file === dir &&
        error.message === `Missing tensor: "missing" (in ${dir})`);
    }
  });
});

Deno.test("Checkpoint.close is idempotent and unmaps every shard", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", y: "a.safetensors", z: "b.safetensors" });
    const checkpoint = Checkpoint.open(dir);
    const view = checkpoint.bytes("x");
    assert.equal(view.length, 4);
    checkpoint.close();
    checkpoint.close();
    assert.equal(checkpoint.closed, true);
    assert.equal(view.length, 0);
    assert.throws(() => checkpoint.bytes("x"), /^CheckpointError: Checkpoint is closed/);
    assert.equal(checkpoint.info("x").byteLength, 4); // metadata stays readable
    if (Deno.build.os === "linux") assert.ok(!Deno.readTextFileSync("/proc/self/maps").includes(dir));
  });
});

// ---- index validation ----------------------------------------------------------------------------------

Deno.test("Checkpoint.open refuses shard names outside the folder", async () => {
  await withTempDir((dir) => {
    Deno.mkdirSync(`${dir}/ckpt`);
    const ckpt = `${dir}/ckpt`;
    Deno.writeFileSync(`${dir}/x.safetensors`, shard({ x: { length: 1, fill: 0 } }));
    for (const name of ["../x.safetensors", `${dir}/x.safetensors`, "sub/../../x.safetensors", ".", ".."]) {
      writeIndex(ckpt, { x: name });
      assertRefused(
        ckpt,
        new RegExp(
          `^Shard outside the checkpoint folder: ${RegExp.escape(JSON.stringify(name))} for tensor "x"`,
        ),
        `${ckpt}/${INDEX_FILE}`,
      );
    }
  });
});

Deno.test("Checkpoint.open accepts a shard that is a link to a file elsewhere", async () => {
  await withTempDir((dir) => {
    Deno.mkdirSync(`${dir}/blobs`);
    Deno.mkdirSync(`${dir}/snapshot`);
    Deno.writeFileSync(`${dir}/blobs/1234`, shard({ x: { length: 2, fill: 7 } }));
    Deno.symlinkSync("../blobs/1234", `${dir}/snapshot/a.safetensors`);
    writeIndex(`${dir}/snapshot`, { x: "./a.safetensors" });
    using checkpoint = Checkpoint.open(`${dir}/snapshot`);
    assert.deepEqual([...checkpoint.bytes("x")], [7, 7]);
    assert.deepEqual(checkpoint.files, [`${dir}/snapshot/a.safetensors`]);
  });
});

Deno.test("Checkpoint.open refuses a missing shard", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", y: "a.safetensors", z: "c.safetensors" });
    assertRefused(
      dir,
      /^Missing shard: "c\.safetensors", listed for tensor "z", does not exist/,
      `${dir}/${INDEX_FILE}`,
    );
  });
});

Deno.test("Checkpoint.open refuses a malformed index", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    Deno.writeTextFileSync(`${dir}/${INDEX_FILE}`, "{not json");
    assertRefused(dir, /^Index is not valid JSON: /, `${dir}/${INDEX_FILE}`);
    Deno.writeTextFileSync(`${dir}/${INDEX_FILE}`, "[]");
    assertRefused(dir, /^Invalid index: expected a JSON object/);
    writeIndex(dir, ["a.safetensors"]);
    assertRefused(dir, /^Invalid index: "weight_map" must be an object/);
    Deno.writeTextFileSync(`${dir}/${INDEX_FILE}`, "{}");
    assertRefused(dir, /^Invalid index: "weight_map" must be an object/);
    writeIndex(dir, {});
    assertRefused(dir, /^Invalid index: "weight_map" is empty/);
    writeIndex(dir, { x: 1 });
    assertRefused(dir, /^Invalid index: weight_map entry "x" must be a file name, got number/);
    writeIndex(dir, { x: "" });
    assertRefused(dir, /^Invalid shard name: "" for tensor "x"/);
    writeIndex(dir, { x: "a.safetensors\0" });
    assertRefused(dir, /^Invalid shard name: /);
  });
});

Deno.test("Checkpoint.open refuses a tensor stored in two shards", async () => {
  await withTempDir((dir) => {
    Deno.writeFileSync(`${dir}/a.safetensors`, shard({ x: { length: 4, fill: 1 } }));
    Deno.writeFileSync(
      `${dir}/b.safetensors`,
      shard({ x: { length: 4, fill: 2 }, z: { length: 1, fill: 3 } }),
    );
    writeIndex(dir, { x: "a.safetensors", z: "b.safetensors" });
    assertRefused(
      dir,
      /^Duplicate tensor: "x" is stored in both "a\.safetensors" and "b\.safetensors"/,
      `${dir}/${INDEX_FILE}`,
    );
  });
});

Deno.test("Checkpoint.open refuses a tensor mapped to the wrong shard", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", y: "b.safetensors", z: "b.safetensors" });
    assertRefused(
      dir,
      /^Tensor in wrong shard: "y" is mapped to "b\.safetensors" but stored in "a\.safetensors"/,
      `${dir}/${INDEX_FILE}`,
    );
  });
});

Deno.test("Checkpoint.open refuses a listed tensor that no shard holds", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", y: "a.safetensors", z: "b.safetensors", w: "b.safetensors" });
    assertRefused(
      dir,
      /^Tensor missing from shard: "w" is mapped to "b\.safetensors", which does not hold it/,
    );
  });
});

Deno.test("Checkpoint.open refuses a stored tensor that the index does not list", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    writeIndex(dir, { x: "a.safetensors", z: "b.safetensors" });
    assertRefused(
      dir,
      /^Tensor not in index: "y" is stored in "a\.safetensors" but weight_map does not list it/,
    );
  });
});

Deno.test("Checkpoint.open refuses an invalid shard and unmaps the ones already open", async () => {
  await withTempDir((dir) => {
    writeTwoShards(dir);
    const bad = shard({ z: { length: 3, fill: 3 } });
    Deno.writeFileSync(`${dir}/b.safetensors`, bad.subarray(0, bad.length - 1)); // truncated
    writeIndex(dir, { x: "a.safetensors", y: "a.safetensors", z: "b.safetensors" });
    assertRefused(dir, /^Tensor data out of bounds: "z"/, `${dir}/b.safetensors`);
  });
});
