/**
 * The CLI's entry: picks the subcommand, prints help, turns usage errors into exit code 2.
 *
 * @module
 */
import { type Command, UsageError } from "./command.ts";

/** Registered subcommands, in help order. */
export const COMMANDS: Command[] = [];

function topUsage(): string {
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`);
  return `Usage: deno run -A main.ts <command> [options]\n\nCommands:\n${
    lines.join("\n")
  }\n\nRun a command with --help for its options.`;
}

/** Runs the CLI with `args`; resolves to the process exit code. */
export async function runCli(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(topUsage());
    return 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    console.error(`error: unknown command "${name}"\n\n${topUsage()}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n\n${cmd.usage}`);
      return 2;
    }
    throw e;
  }
}
