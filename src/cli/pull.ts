/**
 * `pull`: downloads a model from the Hugging Face hub into the local cache and prints its folder.
 *
 * @module
 */
import { UsageError } from "./command.ts";
import type { Command } from "./command.ts";
import { HUB_ENVIRONMENT, resolveWithProgress } from "./hub_progress.ts";
import { isInteractive, parseFlags } from "./options.ts";
import { parseModelName } from "../hub/mod.ts";

const usage = `Usage: deno run -A main.ts pull <org/name[@revision]> [options]

Downloads a model from the Hugging Face hub into the local cache, only the files the engine reads
(config, safetensors weights, tokenizer, chat template), each verified against the hub's size and
sha256, and prints the folder. Files already cached are not fetched again, and an interrupted
download resumes where it stopped. Afterwards --model org/name on any command loads it.

Options:
  --revision <rev>        A branch, tag or commit; default the @revision of the name, else main
  --offline               Send no request: print the cached folder, or fail
  -h, --help              Show this help

${HUB_ENVIRONMENT}`;

/** The `pull` subcommand. */
export const command: Command = {
  name: "pull",
  summary: "Download a model from the Hugging Face hub into the local cache",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      allowPositionals: true,
      options: {
        revision: { type: "string" },
        offline: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const [name, ...more] = positionals;
    if (name === undefined) throw new UsageError("Missing the model: pull org/name[@revision]");
    if (more.length > 0) throw new UsageError(`Unexpected argument: "${more[0]}", pull takes one model`);
    if (parseModelName(name) === undefined) {
      throw new UsageError(`Invalid model name: "${name}", expected org/name or org/name@revision`);
    }
    if (values.revision === "") throw new UsageError("Invalid --revision: empty");
    const resolved = await resolveWithProgress(name, {
      interactive: isInteractive(),
      pull: true,
      revision: values.revision,
      offline: values.offline,
    });
    console.log(resolved.dir);
    return 0;
  },
};
