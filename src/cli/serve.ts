/**
 * `serve`: loads a model and serves it over the OpenAI-compatible API of `src/server/server.ts`
 * until SIGINT or SIGTERM. Like the demo it starts under `swapmoe` at 70% of the all-resident
 * footprint, so that `PUT /v1/engine/budget` can move the budget both ways; `--policy full` holds
 * every expert.
 *
 * @module
 */
import { type EngineOptions, formatBytes } from "../../mod.ts";
import { MAX_SEQUENCES } from "../runtime/requests.ts";
import { createServer, type ServerOptions } from "../server/server.ts";
import { type Command, UsageError } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  budgetedOptions,
  contextLengthOf,
  describeModel,
  intFlag,
  MODEL_OPTIONS,
  modelUsage,
  openEngine,
  parseFlags,
} from "./options.ts";

const DEFAULT_PORT = 8000;
/** The budget of a policy that takes one, when `--budget` is not given. */
const BUDGET = "70%";

const usage = `Usage: ${PROGRAM} serve [options]

Serves the model over an OpenAI-compatible HTTP API until Ctrl-C:
  POST /v1/chat/completions, POST /v1/completions ("stream": true for server-sent events),
  GET /v1/models, GET and PUT /v1/engine/budget ({"budget": "60%"}), GET /metrics, GET /health.

Server options:
  --port <n>              TCP port; 0 picks a free one; default ${DEFAULT_PORT}
  --host <address>        Address to listen on; default 127.0.0.1 (this machine only)
  --api-key <key>         Require "Authorization: Bearer <key>" on every route but /health;
                          default: $SWAPMOE_API_KEY when set, else none
  --parallel <n>          Requests decoded together, each with KV caches of its own in the
                          budget (the engine's maxBatchSequences); default: as many as have
                          their KV caches within 1/8 of the budget, at most 16
  --max-queue <n>         Requests that may wait behind them before new ones get 503; default 16
  --max-tokens <n>        New tokens for a request without max_tokens; default 256
  --quiet                 No access log on stderr

${modelUsage({ budget: `${BUDGET} (all of it under full)`, policy: "swapmoe" })}

Example:
  ${PROGRAM} serve --budget 60%
  curl -X PUT localhost:${DEFAULT_PORT}/v1/engine/budget -d '{"budget": "80%"}'`;

/** What the flags of `serve` ask for. */
export interface ServeArgs {
  help: boolean;
  engine: EngineOptions;
  host: string;
  port: number;
  server: Pick<ServerOptions, "apiKey" | "maxQueue" | "defaultMaxTokens">;
  quiet: boolean;
}

/** Parses and checks the flags of `serve`; throws {@link UsageError} on a bad one. */
export function parseServeArgs(args: string[], env: { apiKey?: string } = {}): ServeArgs {
  const { values } = parseFlags({
    args,
    allowPositionals: false,
    options: {
      ...MODEL_OPTIONS,
      port: { type: "string" },
      host: { type: "string" },
      "api-key": { type: "string" },
      "max-queue": { type: "string" },
      parallel: { type: "string" },
      "max-tokens": { type: "string" },
      quiet: { type: "boolean" },
    },
  });
  const help = values.help ?? false;
  if (values.host === "") throw new UsageError("Invalid --host: empty");
  const apiKey = values["api-key"] ?? env.apiKey;
  if (apiKey === "") throw new UsageError("Invalid --api-key: empty");
  return {
    help,
    engine: help
      ? {}
      : withParallel(budgetedOptions(values, BUDGET), intFlag("parallel", values.parallel, 1, MAX_SEQUENCES)),
    host: values.host ?? "127.0.0.1",
    port: intFlag("port", values.port, 0, 65535) ?? DEFAULT_PORT,
    server: {
      apiKey,
      maxQueue: intFlag("max-queue", values["max-queue"], 0),
      defaultMaxTokens: intFlag("max-tokens", values["max-tokens"], 1),
    },
    quiet: values.quiet ?? false,
  };
}

/** `options` with `maxBatchSequences: parallel` when `--parallel` was given. */
function withParallel(options: EngineOptions, parallel: number | undefined): EngineOptions {
  return parallel === undefined ? options : { ...options, maxBatchSequences: parallel };
}

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

/** The `serve` subcommand. */
export const command: Command = {
  name: "serve",
  summary: "Serve the model over an OpenAI-compatible HTTP API, budget adjustable at run time",
  usage,
  async run(args) {
    const a = parseServeArgs(args, { apiKey: Deno.env.get("SWAPMOE_API_KEY") || undefined });
    if (a.help) {
      console.log(usage);
      return 0;
    }
    await using engine = await openEngine(a.engine, true);
    const log = (l: Parameters<NonNullable<ServerOptions["onLog"]>>[0]) =>
      console.error(
        `${new Date().toISOString()} ${l.method} ${l.path} ${l.status} ${l.milliseconds}ms` +
          (l.completionTokens !== undefined ? ` ${l.promptTokens}+${l.completionTokens} tokens` : ""),
      );
    await using server = createServer(engine, {
      ...a.server,
      contextLength: contextLengthOf(engine, a.engine),
      onLog: a.quiet ? undefined : log,
    });
    const stop = Promise.withResolvers<void>();
    const onSignal = () => stop.resolve();
    const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
    for (const s of signals) Deno.addSignalListener(s, onSignal);
    try {
      server.listen({
        hostname: a.host,
        port: a.port,
        onListen: ({ hostname, port }) => {
          const s = engine.stats();
          const host = hostname.includes(":") ? `[${hostname}]` : hostname;
          console.log(`Serving ${describeModel(engine)}`);
          console.log(
            `  as "${server.modelId}" on http://${host}:${port}/v1 · policy ${s.policy} · budget ${
              formatBytes(s.budgetBytes)
            } of ${
              formatBytes(s.fullBytes)
            } · context ${server.contextLength} · ${s.maxBatchSequences} in parallel · Ctrl-C stops`,
          );
        },
      });
      if (!LOOPBACK.has(a.host) && !a.server.apiKey) {
        console.error(`warning: listening on ${a.host} without --api-key: whoever can reach it can use it`);
      }
      await stop.promise;
      console.error("Shutting down");
      return 0;
    } finally {
      for (const s of signals) Deno.removeSignalListener(s, onSignal);
    }
  },
};
