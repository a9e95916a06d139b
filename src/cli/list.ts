/**
 * `list`: the models in the local Hugging Face hub cache, with their sizes and revisions.
 *
 * @module
 */
import { formatBytes } from "../../mod.ts";
import { hubCacheDir, listCachedModels } from "../hub/mod.ts";
import type { Command } from "./command.ts";
import { HUB_ENVIRONMENT } from "./hub_progress.ts";
import { parseFlags } from "./options.ts";

const usage = `Usage: deno run -A main.ts list [options]

Lists the models in the local Hugging Face hub cache (shared with huggingface_hub and transformers):
their size on disk, each revision and the commit it resolved to, and whether each snapshot holds
a whole checkpoint. Partial downloads are shown apart; the next pull resumes them.

Options:
  --json                  Print a JSON array instead
  -h, --help              Show this help

${HUB_ENVIRONMENT}`;

/** The `list` subcommand. */
export const command: Command = {
  name: "list",
  summary: "List the models in the local hub cache, with their sizes",
  usage,
  run(args) {
    const { values } = parseFlags({
      args,
      allowPositionals: false,
      options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    });
    if (values.help) {
      console.log(usage);
      return Promise.resolve(0);
    }
    const models = listCachedModels();
    if (values.json) {
      console.log(JSON.stringify(models, null, 2));
      return Promise.resolve(0);
    }
    const root = hubCacheDir();
    if (models.length === 0) {
      console.log(`No models in the cache at ${root}`);
      return Promise.resolve(0);
    }
    const rows = models.map((m) => {
      const byCommit = new Map<string, string[]>();
      for (const [rev, commit] of Object.entries(m.refs)) {
        byCommit.set(commit, [...byCommit.get(commit) ?? [], rev]);
      }
      const snapshots = m.snapshots.map((s) => {
        const names = byCommit.get(s.commit);
        return `${names ? `${names.join(", ")} → ` : ""}${s.commit.slice(0, 7)}${
          s.complete ? "" : " (incomplete)"
        }`;
      });
      const partial = m.incompleteBytes > 0 ? ` + ${formatBytes(m.incompleteBytes)} partial` : "";
      return [m.repo, `${formatBytes(m.bytes)}${partial}`, snapshots.join("; ") || "no snapshot"];
    });
    const header = ["MODEL", "SIZE", "REVISIONS"];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (r: string[]) => r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i]!) : c)).join("  ");
    console.log([line(header), ...rows.map(line), "", `Cache: ${root}`].join("\n"));
    return Promise.resolve(0);
  },
};
