/**
 * The swapmoe command line: `deno run -A main.ts [command] [options]`.
 * With no arguments it runs the demo on the bundled model.
 *
 * @module
 */
import { runCli } from "./src/cli/main.ts";

if (import.meta.main) Deno.exit(await runCli(Deno.args));
