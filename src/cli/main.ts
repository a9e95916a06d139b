/**
 * The CLI's entry: picks the subcommand (the demo when none is named), prints help and the version,
 * and turns every error into one line on stderr: exit code 2 for usage errors (bad flags and values,
 * a missing or unusable model folder, a budget that cannot be met), followed by one line naming the
 * command's `--help` (and the closest command or flag to a mistyped one); 1 for failures at run
 * time. No stack traces unless `SWAPMOE_DEBUG=1`.
 *
 * To add a subcommand: write `src/cli/<name>.ts` exporting `command: Command`, import it below and
 * add it to {@link COMMANDS}.
 *
 * @module
 */
import {
  BudgetError,
  CheckpointError,
  OptionError,
  SwapMoeError,
  TokenizerError,
  WebGpuUnavailableError,
} from "../../mod.ts";
import { VERSION } from "../version.ts";
import { type Command, UsageError } from "./command.ts";
import { PROGRAM } from "./program.ts";
import { closest } from "./suggest.ts";
import { command as demo } from "./demo.ts";
import { command as generate } from "./generate.ts";
import { command as chat } from "./chat.ts";
import { command as info } from "./info.ts";
import { command as serve } from "./serve.ts";
import { command as evaluate } from "./eval.ts";
import { command as pull } from "./pull.ts";
import { command as list } from "./list.ts";
import { command as rm } from "./rm.ts";

/** Registered subcommands, in help order. */
export const COMMANDS: Command[] = [
  demo,
  generate,
  chat,
  info,
  serve,
  evaluate,
  pull,
  list,
  rm,
];

function topUsage(): string {
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`);
  return `swapmoe ${VERSION}: Mixture-of-Experts inference on WebGPU under a GPU memory budget

Usage: ${PROGRAM} [command] [options]

Commands:
${lines.join("\n")}

With no command (or only options), runs the demo: ${PROGRAM} --budget 50%
Run a command with --help for its options; --version prints the version.`;
}

/** Runs the CLI with `args`; resolves to the process exit code. */
export async function runCli(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === "--help" || name === "-h" || name === "help") {
    console.log(topUsage());
    return 0;
  }
  if (name === "--version" || name === "-V") {
    console.log(`swapmoe ${VERSION}`);
    return 0;
  }
  // `main.ts` and `main.ts --budget 50%` run the demo
  const cmd = name === undefined || name.startsWith("-") ? demo : COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    const hit = closest(name!, COMMANDS.map((c) => c.name));
    console.error(
      `error: Unknown command: "${name}"${hit === undefined ? "" : ` (did you mean ${hit}?)`}\n` +
        `hint: "${PROGRAM} --help" lists the commands`,
    );
    return 2;
  }
  try {
    return await cmd.run(cmd === demo && name !== "demo" ? args : rest);
  } catch (e) {
    return report(e, cmd);
  }
}

/** Errors about what the user gave: flags, values, the model folder, the budget. */
function isUsageError(e: unknown): boolean {
  return e instanceof UsageError || e instanceof OptionError || e instanceof BudgetError ||
    e instanceof CheckpointError || e instanceof TokenizerError;
}

/** Prints `e` as one `error: …` line (and where help is, for usage errors); returns the exit code. */
function report(e: unknown, cmd: Command): number {
  // stdout closed early (`| head`): nothing left to say
  if (e instanceof Deno.errors.BrokenPipe) return 0;
  const debug = Deno.env.get("SWAPMOE_DEBUG") === "1";
  if (debug && e instanceof Error) console.error(e.stack);
  const message = e instanceof Error ? e.message : String(e);
  if (isUsageError(e)) {
    // the default policy holds every expert: a smaller budget needs another policy
    const hint = e instanceof BudgetError && message.includes('policy "full"')
      ? "; --policy swapmoe, static or lru run in less"
      : "";
    console.error(
      `error: ${oneLine(message)}${hint}\nhint: "${PROGRAM} ${cmd.name} --help" lists the options`,
    );
    return 2;
  }
  if (e instanceof WebGpuUnavailableError) {
    console.error(
      `error: ${
        oneLine(message)
      }\nhint: without a GPU, install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers`,
    );
    return 1;
  }
  const internal = e instanceof SwapMoeError ? "" : `${e instanceof Error ? e.name : "Error"}: `;
  console.error(
    `error: ${internal}${oneLine(message)}${internal && !debug ? " (SWAPMOE_DEBUG=1 shows the stack)" : ""}`,
  );
  return 1;
}

/** The first line of a message; the others are joined on when short. */
function oneLine(message: string): string {
  const lines = message.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  return lines.join(" ").length <= 300 ? lines.join(" ") : `${lines[0]} …`;
}
