/**
 * `rm`: deletes one model from the local Hugging Face hub cache.
 *
 * @module
 */
import { formatBytes } from "../../mod.ts";
import { parseModelName, removeCachedModel } from "../hub/mod.ts";
import { type Command, UsageError } from "./command.ts";
import { HUB_ENVIRONMENT } from "./hub_progress.ts";
import { parseFlags } from "./options.ts";

const usage = `Usage: deno run -A main.ts rm <org/name>

Deletes a model from the local Hugging Face hub cache: every revision of it, and partial downloads.
The cache is shared with huggingface_hub and transformers, which will download it again if asked.

Options:
  -h, --help              Show this help

${HUB_ENVIRONMENT}`;

/** The `rm` subcommand. */
export const command: Command = {
  name: "rm",
  summary: "Delete a model from the local hub cache",
  usage,
  run(args) {
    const { values, positionals } = parseFlags({
      args,
      allowPositionals: true,
      options: { help: { type: "boolean", short: "h" } },
    });
    if (values.help) {
      console.log(usage);
      return Promise.resolve(0);
    }
    const [name, ...more] = positionals;
    if (name === undefined) throw new UsageError("Missing the model: rm org/name");
    if (more.length > 0) throw new UsageError(`Unexpected argument: "${more[0]}", rm takes one model`);
    if (name.includes("@") || parseModelName(name) === undefined) {
      throw new UsageError(`Invalid model name: "${name}", expected org/name (rm deletes every revision)`);
    }
    const removed = removeCachedModel(name);
    console.log(
      `Removed ${removed.repo} (${formatBytes(removed.bytes + removed.incompleteBytes)}) from ${removed.dir}`,
    );
    return Promise.resolve(0);
  },
};
