import assert from "node:assert/strict";
import { CheckpointError } from "../src/errors.ts";
import { MappedFile } from "./mmap.ts";
import { describeErrno, errno, libc, LIBC_SYMBOLS, O_RDONLY } from "./libc.ts";

async function withTempDir(fn: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe_mmap_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function pattern(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + 7) & 0xff;
  return bytes;
}

function onLinux(): boolean {
  return Deno.build.os === "linux";
}

Deno.test("libc loads once and binds every symbol", () => {
  const lib = libc();
  assert.equal(libc(), lib);
  for (const name of Object.keys(LIBC_SYMBOLS)) assert.ok(name in lib, name);
  assert.ok(lib.getpagesize() >= 4096);
});

Deno.test("errno and describeErrno report a failed libc call", () => {
  const fd = libc().open(new TextEncoder().encode("/nonexistent/swapmoe/file\0"), O_RDONLY);
  assert.equal(fd, -1);
  if (errno() === undefined) return; // no errno accessor on this libc
  assert.equal(errno(), 2); // ENOENT on Linux, macOS and FreeBSD
  assert.match(describeErrno(), /^errno 2, \S/);
});

Deno.test("MappedFile maps a file and returns zero-copy views", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/data.bin`;
    const data = pattern(10_000);
    Deno.writeFileSync(path, data);
    using file = MappedFile.open(path);
    assert.equal(file.path, path);
    assert.equal(file.byteLength, 10_000);
    assert.equal(file.closed, false);

    const all = file.bytes(0, file.byteLength);
    assert.deepEqual(all, data);
    const middle = file.bytes(4097, 100);
    assert.equal(middle.length, 100);
    assert.deepEqual(middle, data.subarray(4097, 4197));
    // Zero-copy: both views share one buffer spanning the mapping, at the requested offset.
    assert.equal(middle.buffer, all.buffer);
    assert.equal(middle.buffer.byteLength, 10_000);
    assert.equal(middle.byteOffset, 4097);
    assert.equal(file.bytes(10_000, 0).length, 0);
    assert.equal(file.bytes(9_999, 1)[0], data[9_999]);
  });
});

Deno.test("MappedFile refuses ranges outside the file", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/data.bin`;
    Deno.writeFileSync(path, pattern(100));
    using file = MappedFile.open(path);
    assert.throws(
      () => file.bytes(90, 11),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === path &&
        error.message ===
          `Byte range out of bounds: 11 bytes at offset 90 end at byte 101, file is 100 bytes (in ${path})`,
    );
    assert.throws(() => file.bytes(101, 0), /Byte range out of bounds/);
    assert.throws(() => file.bytes(-1, 1), /Invalid byte range/);
    assert.throws(() => file.bytes(0, -1), /Invalid byte range/);
    assert.throws(() => file.bytes(0.5, 1), /Invalid byte range/);
    assert.throws(() => file.bytes(0, Number.NaN), /Invalid byte range/);
    assert.throws(() => file.advise(50, 51, "willneed"), /Byte range out of bounds/);
  });
});

Deno.test("MappedFile handles an empty file without mapping it", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/empty.bin`;
    Deno.writeFileSync(path, new Uint8Array(0));
    const file = MappedFile.open(path, { willNeed: true });
    assert.equal(file.byteLength, 0);
    const empty = file.bytes(0, 0);
    assert.ok(empty instanceof Uint8Array);
    assert.equal(empty.length, 0);
    assert.throws(() => file.bytes(0, 1), CheckpointError);
    file.advise(0, 0, "dontneed");
    file.close();
    file.close();
    assert.equal(file.closed, true);
  });
});

Deno.test("MappedFile.advise accepts every advice and unaligned ranges", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/data.bin`;
    const data = pattern(3 * 4096 + 17);
    Deno.writeFileSync(path, data);
    using file = MappedFile.open(path, { willNeed: true });
    for (const advice of ["normal", "willneed", "sequential", "dontneed"] as const) {
      file.advise(4095, 4098, advice);
      file.advise(0, file.byteLength, advice);
      file.advise(123, 0, advice);
    }
    // After MADV_DONTNEED on a private read-only mapping the pages come back from the file.
    assert.deepEqual(file.bytes(0, file.byteLength), data);
    // @ts-expect-error: not an advice
    assert.throws(() => file.advise(0, 1, "toString"), /Unknown advice/);
  });
});

Deno.test("MappedFile.close is idempotent and detaches earlier views", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/data.bin`;
    Deno.writeFileSync(path, pattern(5000));
    const file = MappedFile.open(path);
    const view = file.bytes(10, 20);
    const copy = view.slice();
    assert.equal(view.length, 20);
    file.close();
    assert.equal(file.closed, true);
    // The shared buffer is detached: the stale view reads as empty instead of touching unmapped memory.
    assert.equal(view.buffer.detached, true);
    assert.equal(view.length, 0);
    assert.equal(view[0], undefined);
    assert.equal(copy.length, 20);
    file.close();
    assert.throws(() => file.bytes(0, 1), /Mapped file is closed/);
    assert.throws(() => file.advise(0, 1, "willneed"), /Mapped file is closed/);
  });
});

Deno.test("MappedFile makes a new buffer when a consumer detached the shared one", async () => {
  await withTempDir((dir) => {
    const path = `${dir}/data.bin`;
    const data = pattern(64);
    Deno.writeFileSync(path, data);
    using file = MappedFile.open(path);
    const first = file.bytes(0, 8);
    const moved = first.buffer.transfer(); // now owns the mapping's memory; dropped at once
    assert.equal(moved.byteLength, 64);
    assert.equal(first.length, 0);
    assert.deepEqual(file.bytes(8, 8), data.subarray(8, 16));
  });
});

Deno.test("MappedFile.open refuses missing files, folders and NUL in paths", async () => {
  await withTempDir((dir) => {
    assert.throws(
      () => MappedFile.open(`${dir}/missing.bin`),
      (error: unknown) =>
        error instanceof CheckpointError && error.file === `${dir}/missing.bin` &&
        error.message.startsWith("File not found"),
    );
    assert.throws(() => MappedFile.open(dir), /Not a regular file/);
    assert.throws(() => MappedFile.open(`${dir}/a\0b`), /NUL character/);
  });
});

Deno.test({
  name: "MappedFile.open reports errno when open(2) fails",
  ignore: !onLinux() || Deno.uid() === 0,
  fn: async () => {
    await withTempDir((dir) => {
      const path = `${dir}/secret.bin`;
      Deno.writeFileSync(path, pattern(10));
      Deno.chmodSync(path, 0o000);
      assert.throws(() => MappedFile.open(path), /Cannot open file: errno 13, Permission denied/);
    });
  },
});

Deno.test({
  name: "MappedFile.close unmaps (Linux: checked in /proc/self/maps)",
  ignore: !onLinux(),
  fn: async () => {
    await withTempDir((dir) => {
      const path = `${dir}/mapped-marker.bin`;
      Deno.writeFileSync(path, pattern(8192));
      const file = MappedFile.open(path);
      assert.ok(Deno.readTextFileSync("/proc/self/maps").includes(path));
      file.close();
      assert.ok(!Deno.readTextFileSync("/proc/self/maps").includes(path));
    });
  },
});
