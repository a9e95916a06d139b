/**
 * The shape of a CLI subcommand. `src/cli/main.ts` holds the registry; each subcommand lives in
 * its own file and exports one {@link Command}.
 *
 * @module
 */

/** A subcommand of `main.ts`. */
export interface Command {
  /** As typed: `generate`, `chat`, `info`, `serve`, `eval`, … */
  readonly name: string;
  /** One line for the top-level help. */
  readonly summary: string;
  /** Full usage text printed by `--help` and after a usage error. */
  readonly usage: string;
  /** Runs with the arguments after the subcommand name; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

/** A bad flag or value: the CLI prints the message and the usage, and exits with code 2. */
export class UsageError extends Error {
  /** Creates a usage error. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}
