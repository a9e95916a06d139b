/**
 * `demo`: what `deno task demo` and a bare `deno run -A main.ts` run. Loads the bundled model under a
 * budget below its all-resident footprint with the `swapmoe` policy, streams a greedy continuation
 * of a prompt, and ends with the summary: speed, bytes held against the budget, resident experts,
 * hit rate and swaps. The 70% budget applies to the policies that take a budget: `--policy full`
 * holds every expert.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { formatBytes } from "../../mod.ts";
import type { Command } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  budgetedOptions,
  describeModel,
  intFlag,
  isInteractive,
  MODEL_OPTIONS,
  modelUsage,
  openEngine,
  parseFlags,
  readProfile,
  summaryLines,
  writeOut,
} from "./options.ts";

const PROMPT = "The state of the Union is";
const MAX_TOKENS = 48;
const BUDGET = "70%";
const CONTEXT_LENGTH = 512;
/** The bundled model's calibration profile (bench/expert_profile.ts over the pre-2012 addresses). */
const BUNDLED_PROFILE = fileURLToPath(
  new URL("../../models/sotu-moe-mini/expert_profile.json", import.meta.url),
);

const usage = `Usage: ${PROGRAM} demo [prompt] [options]
       ${
  PROGRAM === "deno run -A main.ts" ? "deno task demo [prompt] [options]\n       " : ""
}${PROGRAM} [options]

Runs the bundled model under a GPU memory budget with SwapMoE's masked gating, streams a
greedy continuation of the prompt (default "${PROMPT}"), and prints tokens/s,
GPU bytes held against the budget, the resident experts per layer, the hit rate and the swaps.

Options:
  --max-tokens <n>        Most new tokens; default ${MAX_TOKENS}

${
  modelUsage({
    budget: `${BUDGET} (all of it under full)`,
    policy: "swapmoe",
    contextLength: String(CONTEXT_LENGTH),
    profile: "the bundled model's calibration profile",
  })
}`;

/** The `demo` subcommand. */
export const command: Command = {
  name: "demo",
  summary: "Run the bundled model under a budget and print what SwapMoE did (the default)",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      allowPositionals: true,
      options: { ...MODEL_OPTIONS, "max-tokens": { type: "string" } },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const prompt = positionals.length > 0 ? positionals.join(" ") : PROMPT;
    const maxTokens = intFlag("max-tokens", values["max-tokens"], 1) ?? MAX_TOKENS;
    const options = budgetedOptions(values, BUDGET, { contextLength: CONTEXT_LENGTH });
    // the bundled model ships a calibration profile: swapmoe starts from its top experts
    if (values.model === undefined && options.profile === undefined && options.policy !== "full") {
      options.profile = readProfile(BUNDLED_PROFILE);
    }
    const tty = isInteractive();

    const t0 = performance.now();
    // one generation: one sequence's KV caches, the rest of the budget for experts
    await using engine = await openEngine({ ...options, maxBatchSequences: 1 }, true);
    const loaded = engine.stats();
    console.log(`swapmoe demo: ${describeModel(engine)}`);
    const budget = options.budget === undefined
      ? `all-resident ${formatBytes(loaded.fullBytes)}`
      : `budget ${options.budget} = ${formatBytes(loaded.budgetBytes)} of ${
        formatBytes(loaded.fullBytes)
      } all-resident`;
    console.log(
      `Loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s: policy ${loaded.policy}, ${budget}, ${
        loaded.expertSlots.reduce((a, b) => a + b, 0)
      } of ${loaded.expertSlots.length * engine.spec.numExperts} experts on the GPU`,
    );
    console.log();
    await writeOut(tty ? `\x1b[1m${prompt}\x1b[0m` : prompt);
    let finish = "";
    for await (const chunk of engine.generate({ prompt, maxTokens, temperature: 0 })) {
      await writeOut(chunk.text);
      if (chunk.finishReason) finish = chunk.finishReason;
    }
    console.log(`\n\n[finished: ${finish === "stop" ? "end of text" : `${maxTokens} tokens`}]`);
    for (const line of summaryLines(engine)) console.log(line);
    return 0;
  },
};
