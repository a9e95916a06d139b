/**
 * Writes an expert-usage profile: how often the (unmasked) router of each MoE layer chose each expert
 * over calibration text, the importance profile that `static` plans from and that starts `swapmoe`
 * with a good resident set (`--profile FILE` on the CLI, `profile` in the API). The calibration text
 * must not be the evaluation text: for the bundled model it is the pre-2012 addresses it was
 * trained on, windows spread evenly over them.
 *
 *   deno run -A bench/expert_profile.ts [--model DIR] [--corpus sotu-train] [--windows 64] [--out FILE]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine } from "../mod.ts";
import { loadCorpus, tokenizeCorpus } from "../src/eval/corpus.ts";
import { spacedWindows } from "../src/eval/sweep.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    corpus: { type: "string", default: "sotu-train" },
    windows: { type: "string", default: "64" },
    window: { type: "string", default: "256" },
    out: { type: "string" },
  },
});
const window = Number(values.window);
const windows = Number(values.windows);
await using engine = await createEngine({
  model: values.model,
  contextLength: window,
  maxBatchTokens: window,
  maxBatchSequences: 1, // forward calls only
});
const corpus = await loadCorpus(values.corpus!, engine.modelDir);
const ids = spacedWindows(tokenizeCorpus(engine.tokenizer, corpus), window, windows);
for (let i = 0; i < ids.length; i += window) await engine.forward(ids.slice(i, i + window));
const usage = engine.stats().expertUsage;
const out = values.out ?? `${engine.modelDir}/expert_profile.json`;
await Deno.writeTextFile(
  out,
  JSON.stringify(
    {
      about: "Times the unmasked router chose each expert, per MoE layer, over calibration text",
      corpus: corpus.source,
      windows: ids.length / window,
      window,
      usage,
    },
    null,
    2,
  ) + "\n",
);
console.log(`wrote ${out}: ${ids.length} tokens of ${corpus.source}`);
