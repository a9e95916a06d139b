/**
 * Child process of the truncation tests: maps a checkpoint, truncates its shard in place, then reads.
 * `raw`: reads through a view taken before the truncation (the residual hazard: SIGBUS).
 * `engine`: a swapping engine loads experts after the truncation (a typed error, exit 0).
 * Prints one line `RESULT <name>: <message>` before exiting normally.
 *
 * Usage: deno run -A tests/support/truncate_child.ts raw|engine <model folder>
 */
import { MappedFile } from "../../ffi/mmap.ts";
import { createEngine } from "../../mod.ts";

const [mode, dir] = Deno.args;
const shard = `${dir}/model.safetensors`;
if (mode === "raw") {
  using file = MappedFile.open(shard);
  const view = file.bytes(0, file.byteLength);
  Deno.truncateSync(shard, 4096);
  console.log(`RESULT read: ${view[view.length - 1]}`); // a page past the new end: SIGBUS
} else {
  await using engine = await createEngine({
    model: dir,
    policy: "swapmoe",
    budget: "80%",
    contextLength: 64,
  });
  Deno.truncateSync(shard, 4096);
  try {
    for await (const _ of engine.generate({ ids: [1, 2, 3, 4, 5, 6, 7, 8], maxTokens: 64, minTokens: 64 })) {
      // experts swap in from the mapping as the routing shifts
    }
    console.log(`RESULT ok: ${engine.stats().swaps} swaps`);
  } catch (e) {
    console.log(`RESULT ${(e as Error).name}: ${(e as Error).message}`);
  }
}
