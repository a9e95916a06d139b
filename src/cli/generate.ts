/**
 * `generate`: one completion of a prompt given as arguments or on stdin, streamed as text or
 * returned as one JSON object.
 *
 * @module
 */
import type { EngineStats, FinishReason } from "../../mod.ts";
import { type Command, UsageError } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  engineOptions,
  MODEL_OPTIONS,
  modelUsage,
  openEngine,
  parseFlags,
  SAMPLING_OPTIONS,
  samplingRequest,
  samplingUsage,
  summaryLines,
  writeOut,
} from "./options.ts";

const MAX_TOKENS = 128;

const usage = `Usage: ${PROGRAM} generate [prompt] [options]

Continues the prompt (the arguments, or standard input when none are given) and streams the
new text to stdout.

Options:
  --json                  Print one JSON object instead: text, ids, finishReason, promptTokens, stats
  --stats                 Print the run summary to stderr after the text

${samplingUsage(MAX_TOKENS)}

${modelUsage()}`;

/** What `generate --json` prints. */
export interface GenerateOutput {
  /** The generated text (stop strings excluded). */
  text: string;
  /** The generated token ids. */
  ids: number[];
  finishReason: FinishReason;
  /** Tokens in the prompt. */
  promptTokens: number;
  /** `engine.stats()` after the run. */
  stats: EngineStats;
}

async function readPrompt(positionals: string[]): Promise<string> {
  if (positionals.length > 0) return positionals.join(" ");
  if (Deno.stdin.isTerminal()) throw new UsageError("No prompt: give it as an argument or on standard input");
  const text = (await new Response(Deno.stdin.readable).text()).replace(/\r?\n$/, "");
  if (text === "") throw new UsageError("No prompt: standard input was empty");
  return text;
}

/** The `generate` subcommand. */
export const command: Command = {
  name: "generate",
  summary: "Complete a prompt given as arguments or on stdin (--json for scripts)",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      allowPositionals: true,
      options: {
        ...MODEL_OPTIONS,
        ...SAMPLING_OPTIONS,
        json: { type: "boolean" },
        stats: { type: "boolean" },
      },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const request = samplingRequest(values, MAX_TOKENS);
    const options = engineOptions(values);
    const prompt = await readPrompt(positionals);

    // one generation: one sequence's KV caches, the rest of the budget for experts
    await using engine = await openEngine({ ...options, maxBatchSequences: 1 }, !values.json);
    const promptTokens = engine.tokenizer.encode(prompt).length;
    let text = "";
    const ids: number[] = [];
    let finishReason: FinishReason = "length";
    for await (const chunk of engine.generate({ ...request, prompt })) {
      if (!values.json) await writeOut(chunk.text);
      text += chunk.text;
      ids.push(...chunk.ids);
      if (chunk.finishReason) finishReason = chunk.finishReason;
    }
    if (values.json) {
      const out: GenerateOutput = { text, ids, finishReason, promptTokens, stats: engine.stats() };
      console.log(JSON.stringify(out));
    } else {
      await writeOut("\n");
      if (values.stats) { for (const line of summaryLines(engine)) console.error(line); }
    }
    return 0;
  },
};
