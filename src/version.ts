/**
 * The package version, as `deno.json` states it. A module rather than a read of `deno.json`, so that
 * `--version` works wherever the code comes from (a clone, a global install, JSR); `tests/cli_test.ts`
 * checks that the two agree.
 *
 * @module
 */

/** The version of this package: `deno.json`'s `version`. */
export const VERSION = "0.1.0";
