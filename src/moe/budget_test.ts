import assert from "node:assert/strict";
import { OptionError } from "../errors.ts";
import { formatBytes, parseBudget, parseSize } from "./budget.ts";

Deno.test("parseBudget: bytes, sizes in both unit systems, and shares of the footprint", () => {
  assert.equal(parseBudget(1234.9, 1), 1234);
  assert.equal(parseBudget("4096", 1), 4096);
  assert.equal(parseBudget("512MiB", 1), 512 * 2 ** 20);
  assert.equal(parseBudget(" 1.5 GB ", 1), 1.5e9);
  assert.equal(parseBudget("2gib", 1), 2 * 2 ** 30);
  assert.equal(parseBudget("50%", 1001), 500);
  assert.equal(parseBudget("100%", 1001), 1001);
  for (const bad of [0, -1, NaN, "0%", "101%", "lots", "12 parsecs", "0", "0.5", ""]) {
    assert.throws(() => parseBudget(bad, 1000), OptionError, `${JSON.stringify(bad)}`);
  }
});

Deno.test("parseSize: a size of at least one byte, never a share", () => {
  assert.equal(parseSize("12MiB"), 12 * 2 ** 20);
  assert.equal(parseSize("192KiB"), 192 * 1024);
  assert.equal(parseSize("1"), 1);
  for (const bad of ["12%", "0", "0.4", "-3MiB", "many", ""]) {
    assert.throws(
      () => parseSize(bad, "--max-upload"),
      (e: Error) => e instanceof OptionError && e.message.startsWith(`Invalid --max-upload: "${bad}"`),
    );
  }
});

Deno.test("formatBytes: binary units, one decimal above KiB", () => {
  assert.equal(formatBytes(1000), "1000 B");
  assert.equal(formatBytes(12 * 2 ** 20), "12.0 MiB");
  assert.equal(formatBytes(1.35 * 2 ** 30), "1.35 GiB");
});
