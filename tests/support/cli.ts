/**
 * The command line as the tests run it: `deno run -A main.ts …` in a child process from the
 * repository root, without colour.
 *
 * @module
 */

/** What one run of `main.ts` gave. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `main.ts` with `args`; `stdin` is fed to it when given (else it reads none), `env` added. */
export async function runMain(
  args: string[],
  o: { stdin?: string; env?: Record<string, string> } = {},
): Promise<CliRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: new URL("../..", import.meta.url),
    stdin: o.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...o.env },
  }).spawn();
  if (o.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(o.stdin));
    await writer.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
