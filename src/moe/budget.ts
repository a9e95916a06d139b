/**
 * Budget strings and the byte arithmetic of the footprint: what every policy needs, the minimum a
 * model can run with, and how many expert slots a budget buys.
 *
 * @module
 */
import { OptionError } from "../errors.ts";

/** A budget as the API accepts it: bytes, `"512MiB"`, `"2GiB"`, `"1.5GB"`, or `"50%"` of the all-resident footprint. */
export type Budget = number | string;

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** Resolves a {@link Budget} to bytes; `fullBytes` is the all-resident footprint that `"N%"` refers to. */
export function parseBudget(budget: Budget, fullBytes: number): number {
  if (typeof budget === "number") {
    if (!Number.isFinite(budget) || budget <= 0) {
      throw new OptionError(`Invalid budget: ${budget}, expected a positive number of bytes`);
    }
    return Math.floor(budget);
  }
  if (typeof budget !== "string") {
    throw new OptionError(
      `Invalid budget: ${JSON.stringify(budget)}, expected bytes, "2GiB", "512MiB" or "50%"`,
    );
  }
  const s = budget.trim().toLowerCase();
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(s);
  if (pct) {
    const p = Number(pct[1]);
    if (!(p > 0 && p <= 100)) {
      throw new OptionError(`Invalid budget: "${budget}", a percentage must be in (0, 100]`);
    }
    return Math.floor((fullBytes * p) / 100);
  }
  const bytes = sizeBytes(s);
  if (bytes === undefined) {
    throw new OptionError(
      `Invalid budget: "${budget}", expected bytes, a size such as "512MiB", "2GiB" or "1.5GB", or a percentage such as "50%"`,
    );
  }
  return bytes;
}

/** Bytes of a lower-case size such as "12mib" or "4096"; undefined when it is not one or under a byte. */
function sizeBytes(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(s);
  const unit = m ? UNITS[m[2] || "b"] : undefined;
  if (!m || unit === undefined) return undefined;
  const bytes = Math.floor(Number(m[1]) * unit);
  return bytes >= 1 ? bytes : undefined;
}

/**
 * Bytes in a size: a number of bytes or a size such as "512KiB", "12MiB" or "1.5GB".
 * @throws {OptionError} naming `what` when the text is not a size of at least one byte
 */
export function parseSize(text: string, what = "size"): number {
  const bytes = sizeBytes(text.trim().toLowerCase());
  if (bytes === undefined) {
    throw new OptionError(`Invalid ${what}: "${text}", expected bytes or a size such as "512KiB" or "12MiB"`);
  }
  return bytes;
}

/** Formats bytes for people: `1.50 GiB`, `12.0 MiB`, `512 B`. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
