/**
 * An OpenAI-compatible HTTP server over one {@link Engine}, on `Deno.serve`:
 *
 * | route | |
 * | --- | --- |
 * | `POST /v1/chat/completions` | chat (the engine applies the model's chat template), streamed or not |
 * | `POST /v1/completions` | text completion of a prompt (text or token ids), streamed or not |
 * | `GET /v1/models`, `GET /v1/models/{id}` | the one model served |
 * | `GET`, `PUT /v1/engine/budget` | the GPU memory budget, changed while serving |
 * | `GET /metrics` | Prometheus text format |
 * | `GET /health` | liveness; the only route open without the API key |
 *
 * Generation requests run on the engine together, up to its `maxBatchSequences` at once (they
 * decode in one batch), and wait for their turn in arrival order behind them through a bounded
 * {@link RequestQueue} (503 when full); a client that leaves, mid-stream or while waiting, cancels
 * its generation. Every failure is answered in OpenAI's error shape; no request can crash the server.
 * Requests are checked and answered by `openai.ts`, the mapping that `engine.chat.completions.create`
 * uses too. {@link createHandler} gives the routes as a handler for your own `Deno.serve`;
 * {@link createServer} puts that handler on `Deno.serve` itself.
 *
 * @example Serve the bundled model on a free port
 * ```ts
 * import { createEngine } from "../runtime/engine.ts";
 * import { createServer } from "./server.ts";
 *
 * await using engine = await createEngine({ policy: "swapmoe", budget: "60%" });
 * await using server = createServer(engine);
 * const http = server.listen({ port: 0 });
 * const res = await fetch(`http://127.0.0.1:${http.addr.port}/v1/completions`, {
 *   method: "POST",
 *   body: JSON.stringify({ prompt: "The state of the Union is", max_tokens: 8 }),
 * });
 * console.log((await res.json()).choices[0].text);
 * ```
 *
 * @module
 */
import type { Engine, EngineStats, GenerateChunk } from "../runtime/types.ts";
import { BudgetError, OptionError, RequestError } from "../errors.ts";
import { fromEngineError, HttpError, internal, unavailable } from "./errors.ts";
import { Metrics } from "./metrics.ts";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";
import { Answer, type ApiSettings, apiSettings, parseJob, type StartedJob, startJob } from "./openai.ts";
import type { BudgetReport, Model, ModelList } from "./openai_types.ts";
import { checkBudget, type Job } from "./requests.ts";
import { type Release, RequestQueue } from "./queue.ts";

/** Options of {@link createHandler} and {@link createServer}. */
export interface ServerOptions {
  /**
   * Positions a request may fill: prompt + `max_tokens` beyond it get a 400. Default: the engine's
   * context length (its `contextLength` option, else `max_position_embeddings` capped at 4096).
   */
  contextLength?: number;
  /** The model id clients name; default the model folder's basename. */
  modelId?: string;
  /** When set, every route but `/health` wants `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Generation requests that may wait behind the running ones before new ones get 503; default 16. */
  maxQueue?: number;
  /**
   * Generation requests that run at once (decoded together); default and most: the engine's
   * `maxBatchSequences`, the generations it holds KV caches for.
   */
  parallel?: number;
  /** Largest request body; default 1 MiB (413 beyond). */
  maxBodyBytes?: number;
  /** New tokens when a request gives no `max_tokens` (capped by the room left in the context); default 256. */
  defaultMaxTokens?: number;
  /** Called once per answered request, e.g. to print an access log. */
  onLog?: (entry: AccessLog) => void;
  /**
   * Aborting it stops serving: new requests get 503, running and waiting generations end (their
   * clients get a 503 error or the end of their stream); `createServer`'s listeners shut down. For a
   * handler in your own `Deno.serve`, pass the signal that stops it.
   */
  signal?: AbortSignal;
}

/** One line of the access log. */
export interface AccessLog {
  /** The request's method. */
  method: string;
  /** The request's path. */
  path: string;
  /** The HTTP status, or 499 when the client left before the answer ended. */
  status: number;
  /** Arrival to the last byte of the answer. */
  milliseconds: number;
  /** Prompt tokens of a generation request. */
  promptTokens?: number;
  /** Tokens a generation request generated. */
  completionTokens?: number;
}

/** A `Deno.serve` handler: answers one request. */
export type ServeHandler = (request: Request, info?: Deno.ServeHandlerInfo) => Promise<Response>;

/** Where {@link Server.listen} binds. */
export interface ListenOptions {
  /** Default `127.0.0.1`: loopback only. */
  hostname?: string;
  /** Default 8000; 0 picks a free port (read it from the returned server's `addr`). */
  port?: number;
  /** Called once listening; default: silent. */
  onListen?: (addr: Deno.NetAddr) => void;
}

/** The server: a fetch-style handler, and `listen` to put it on `Deno.serve`. */
export interface Server extends AsyncDisposable {
  /** Answers one request; usable without `listen`, e.g. behind another `Deno.serve`. */
  readonly handler: ServeHandler;
  /** The model id clients name. */
  readonly modelId: string;
  /** Positions a request may fill. */
  readonly contextLength: number;
  /** The counters behind `GET /metrics`. */
  readonly metrics: Metrics;
  /** Serves on `Deno.serve`; call more than once to bind more addresses. */
  listen(options?: ListenOptions): Deno.HttpServer<Deno.NetAddr>;
  /**
   * Stops: new requests get 503, running and waiting generations end (their clients get a 503
   * error or the end of their stream), then the listeners shut down. The engine stays open: its
   * owner closes it. Idempotent.
   */
  close(): Promise<void>;
}

const DEFAULT_MAX_QUEUE = 16;
const DEFAULT_MAX_BODY = 1 << 20;

/**
 * The server's routes as a handler for your own `Deno.serve` (or anything that speaks `Request` and
 * `Response`): OpenAI's chat and text completions, the model list, `/health`, `/metrics` and the
 * budget route, with the admission queue, the API key and the error shapes of {@link createServer}.
 * The engine must stay open while the handler serves; abort `options.signal` to end the generations
 * in flight when you stop serving.
 *
 * @example Mount it in your own Deno.serve, under a prefix of your own
 * ```ts
 * import { createEngine, createHandler } from "@swapmoe/swapmoe";
 *
 * await using engine = await createEngine({ policy: "swapmoe", budget: "60%" });
 * const stop = new AbortController();
 * const openai = createHandler(engine, { signal: stop.signal });
 * const server = Deno.serve({ hostname: "127.0.0.1", port: 0, signal: stop.signal }, (req, info) => {
 *   const url = new URL(req.url);
 *   if (url.pathname === "/") return new Response("my app");
 *   if (!url.pathname.startsWith("/ai/")) return new Response("Not found", { status: 404 });
 *   url.pathname = url.pathname.slice("/ai".length); // /ai/v1/chat/completions → /v1/chat/completions
 *   return openai(new Request(url, req), info);
 * });
 * const res = await fetch(`http://localhost:${server.addr.port}/ai/v1/chat/completions`, {
 *   method: "POST",
 *   body: JSON.stringify({ messages: [{ role: "user", content: "The Union" }], max_tokens: 8, min_tokens: 8 }),
 * });
 * console.log((await res.json()).choices[0].message.content);
 * stop.abort();
 * await server.finished;
 * ```
 *
 * @throws {OptionError} for an invalid option
 */
export function createHandler(engine: Engine, options: ServerOptions = {}): ServeHandler {
  return new ApiHandler(engine, options).handler;
}

/** Creates the server for `engine`, on {@link createHandler}'s handler; the engine must stay open while the server runs. */
export function createServer(engine: Engine, options: ServerOptions = {}): Server {
  const server = new ServerImpl(new ApiHandler(engine, options));
  options.signal?.addEventListener("abort", () => server.close(), { once: true });
  return server;
}

type Handler = (request: Request, arrived: number, path: string) => Promise<Response> | Response;

interface Route {
  methods: Record<string, Handler>;
  /** Generation routes count and log themselves when their answer ends. */
  countsItself?: boolean;
  /** Open without the API key. */
  open?: boolean;
}

/** Why a generation stopped early: its client left. */
class ClientGone extends Error {
  constructor() {
    super("The client disconnected");
    this.name = "ClientGone";
  }
}

/** The routes and their state: the queue, the metrics, the generations in flight. */
class ApiHandler {
  readonly modelId: string;
  readonly contextLength: number;
  readonly metrics = new Metrics();
  readonly #engine: Engine;
  readonly #queue: RequestQueue;
  readonly #apiKey: Uint8Array | undefined;
  readonly #maxBody: number;
  readonly #settings: ApiSettings;
  readonly #onLog: ((entry: AccessLog) => void) | undefined;
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #routes: Record<string, Route>;
  /** Generation requests in progress (waiting or running): aborted by close(). */
  readonly #active = new Set<AbortController>();
  /** Their work, awaited by close(). */
  readonly #tasks = new Set<Promise<unknown>>();
  #closing: Promise<void> | undefined;

  constructor(engine: Engine, o: ServerOptions) {
    const positive = (name: string, v: number | undefined, min = 1) => {
      if (v !== undefined && (!Number.isSafeInteger(v) || v < min)) {
        throw new OptionError(`Invalid ${name}: ${v}, expected an integer >= ${min}`);
      }
      return v;
    };
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
      throw new OptionError("Invalid signal: expected an AbortSignal");
    }
    this.#engine = engine;
    this.#settings = apiSettings(engine, {
      modelId: o.modelId,
      contextLength: Math.min(
        engine.spec.maxPositionEmbeddings,
        positive("contextLength", o.contextLength) ?? engine.stats().contextLength,
      ),
      defaultMaxTokens: positive("defaultMaxTokens", o.defaultMaxTokens),
    });
    this.modelId = this.#settings.modelId;
    this.contextLength = this.#settings.contextLength;
    const slots = engine.stats().maxBatchSequences;
    const parallel = positive("parallel", o.parallel) ?? slots;
    if (parallel > slots) {
      throw new OptionError(
        `Invalid parallel: ${parallel}, the engine decodes ${slots} sequence${
          slots === 1 ? "" : "s"
        } at once (its maxBatchSequences): create it with maxBatchSequences: ${parallel}`,
      );
    }
    this.#queue = new RequestQueue(positive("maxQueue", o.maxQueue, 0) ?? DEFAULT_MAX_QUEUE, parallel);
    this.#maxBody = positive("maxBodyBytes", o.maxBodyBytes) ?? DEFAULT_MAX_BODY;
    if (o.apiKey !== undefined && o.apiKey === "") throw new OptionError("Invalid apiKey: empty");
    this.#apiKey = o.apiKey !== undefined ? new TextEncoder().encode(o.apiKey) : undefined;
    this.#onLog = o.onLog;
    this.#routes = {
      "/health": { methods: { GET: () => this.#health() }, open: true },
      "/metrics": { methods: { GET: () => this.#metrics() } },
      "/v1/models": { methods: { GET: () => Response.json(this.#modelList()) } },
      "/v1/models/*": { methods: { GET: (_r, _t, path) => this.#model(path) } },
      "/v1/chat/completions": {
        methods: { POST: (r, t, path) => this.#generate(r, t, path, "chat") },
        countsItself: true,
      },
      "/v1/completions": {
        methods: { POST: (r, t, path) => this.#generate(r, t, path, "completion") },
        countsItself: true,
      },
      "/v1/engine/budget": {
        methods: {
          GET: () => Response.json(budgetReport(this.#engine.stats())),
          PUT: (r) => this.#putBudget(r),
        },
      },
    };
    if (o.signal?.aborted) this.close();
    o.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  readonly handler = (request: Request, _info?: Deno.ServeHandlerInfo): Promise<Response> =>
    this.#handle(request);

  /** Whether {@link close} was called. */
  get closing(): boolean {
    return this.#closing !== undefined;
  }

  async #handle(request: Request): Promise<Response> {
    const arrived = performance.now();
    let path = "/";
    let key = "other";
    let route: Route | undefined;
    let response: Response;
    try {
      path = new URL(request.url).pathname.replace(/(.)\/+$/, "$1");
      key = Object.hasOwn(this.#routes, path)
        ? path
        : path.startsWith("/v1/models/")
        ? "/v1/models/*"
        : "other";
      route = this.#routes[key];
      // the key before anything else: without it a client learns nothing, not even which routes exist
      if (!route?.open) this.#authorise(request);
      if (!route) throw new HttpError(404, `Unknown route: ${request.method} ${path}`, { code: "not_found" });
      // own keys only: a method named "constructor" must not find Object's
      const method = request.method === "HEAD" ? "GET" : request.method; // Deno.serve drops HEAD bodies
      const handle = Object.hasOwn(route.methods, method) ? route.methods[method] : undefined;
      if (!handle) {
        const allow = Object.keys(route.methods).join(", ");
        throw new HttpError(405, `Method not allowed: ${request.method} ${path}, allowed: ${allow}`, {
          code: "method_not_allowed",
          headers: { allow },
        });
      }
      if (this.#closing) throw unavailable();
      response = await handle(request, arrived, path);
      if (route.countsItself) return response;
    } catch (e) {
      response = internal(e).response();
    }
    this.#record(request.method, path, key, response.status, arrived);
    return response;
  }

  /** New requests get 503; running and waiting generations end. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const ac of this.#active) ac.abort(unavailable());
      await Promise.allSettled([...this.#tasks]);
    })();
    return this.#closing;
  }

  #record(method: string, path: string, route: string, status: number, arrived: number, tokens?: {
    prompt: number;
    completion: number;
  }): void {
    this.metrics.countRequest(route, status);
    try {
      this.#onLog?.({
        method,
        path,
        status,
        milliseconds: Math.round(performance.now() - arrived),
        promptTokens: tokens?.prompt,
        completionTokens: tokens?.completion,
      });
    } catch { /* a failing logger must not fail the request */ }
  }

  #authorise(request: Request): void {
    if (!this.#apiKey) return;
    const m = /^Bearer\s+(.+)$/i.exec(request.headers.get("authorization") ?? "");
    if (!m || !sameBytes(new TextEncoder().encode(m[1]!.trim()), this.#apiKey)) {
      throw new HttpError(401, "Invalid or missing API key: send Authorization: Bearer <key>", {
        code: "invalid_api_key",
        headers: { "www-authenticate": "Bearer" },
      });
    }
  }

  #health(): Response {
    return Response.json({
      status: "ok",
      model: this.modelId,
      running: this.#queue.running,
      waiting: this.#queue.waiting,
    });
  }

  #metrics(): Response {
    const queue = {
      waiting: this.#queue.waiting,
      running: this.#queue.running,
      maxWaiting: this.#queue.maxWaiting,
      maxRunning: this.#queue.maxRunning,
    };
    return new Response(this.metrics.render(this.#engine.stats(), queue, { model: this.modelId }), {
      headers: { "content-type": PROMETHEUS_CONTENT_TYPE },
    });
  }

  #modelEntry(): Model {
    return { id: this.modelId, object: "model", created: this.#created, owned_by: "swapmoe" };
  }

  #modelList(): ModelList {
    return { object: "list", data: [this.#modelEntry()] };
  }

  #model(path: string): Response {
    let id = path.slice("/v1/models/".length);
    try {
      id = decodeURIComponent(id);
    } catch { /* malformed escapes: compared as sent */ }
    if (id !== this.modelId) {
      throw new HttpError(404, `The model "${id}" does not exist: this server serves "${this.modelId}"`, {
        param: "model",
        code: "model_not_found",
      });
    }
    return Response.json(this.#modelEntry());
  }

  async #putBudget(request: Request): Promise<Response> {
    const json = await readJson(request, this.#maxBody);
    const budget = typeof json === "object" && json !== null
      ? (json as Record<string, unknown>).budget
      : undefined;
    try {
      checkBudget(budget, this.#engine.stats().fullBytes);
      return Response.json(budgetReport(await this.#engine.setBudget(budget)));
    } catch (e) {
      if (e instanceof RequestError) throw fromEngineError(e);
      if (e instanceof OptionError) {
        throw new HttpError(400, e.message, { param: "budget", code: "invalid_value" });
      }
      if (e instanceof BudgetError) throw fromEngineError(e);
      throw internal(e);
    }
  }

  async #generate(request: Request, arrived: number, path: string, kind: Job["kind"]): Promise<Response> {
    const json = await readJson(request, this.#maxBody);
    let job: Job;
    try {
      job = parseJob(kind, json, this.#settings);
    } catch (e) {
      throw fromEngineError(e);
    }
    const ac = new AbortController();
    let started: StartedJob;
    // a macrotask boundary: requests that arrived together tokenize one at a time with I/O between them
    await new Promise((r) => setTimeout(r, 0));
    try {
      // checks the request now; the engine is taken only when the chunks are first read
      started = await startJob(this.#engine, this.#settings, job, ac.signal);
    } catch (e) {
      throw fromEngineError(e);
    }
    if (this.#closing) throw unavailable();
    const turn = this.#queue.tryEnter(ac.signal);
    if (!turn) {
      throw new HttpError(
        503,
        `The server is busy: ${this.#queue.waiting} requests are waiting (the most allowed), try again later`,
        { code: "queue_full", headers: { "retry-after": "1" } },
      );
    }
    const gen: Generation = { started, turn, ac, arrived };
    const onGone = () => ac.abort(new ClientGone());
    request.signal.addEventListener("abort", onGone, { once: true });
    // gone while its prompt was tokenized: an aborted signal fires no more events
    if (request.signal.aborted) onGone();
    this.#active.add(ac);
    let finished!: () => void;
    const task = new Promise<void>((r) => finished = r);
    this.#tasks.add(task);
    const done = (status: number, completionTokens: number) => {
      request.signal.removeEventListener("abort", onGone);
      this.#active.delete(ac);
      this.#tasks.delete(task);
      this.metrics.duration.observe((performance.now() - arrived) / 1000);
      this.#record(request.method, path, path, status, arrived, {
        prompt: started.promptTokens,
        completion: completionTokens,
      });
      finished();
    };
    return job.stream ? this.#streamed(gen, done) : this.#whole(gen, done);
  }

  /**
   * The answer to an admitted generation: status 200 and the headers at once, the body as `produce`
   * writes it; `produce` resolves to the status and token count for the log and metrics.
   *
   * The head goes out before the generation runs, also for a non-streamed answer, because only then
   * does Deno's HTTP server (hyper) notice a client that closes its connection: while no response
   * has begun, it sees the close only if the whole request arrived in the same read as its headers,
   * which a body of more than a few hundred bytes (Deno's fetch writes the body apart from the head;
   * a large body spans TCP segments anyway) does not. A client that leaves cancels the body stream,
   * which aborts the generation, waiting or running. The cost: an error after this point (the server
   * closing, a GPU failure) reaches the client in the body with status 200, as in a stream.
   */
  #respond(
    gen: Generation,
    done: (status: number, completionTokens: number) => void,
    contentType: string,
    produce: (write: (text: string) => void) => Promise<{ status: number; tokens: number }>,
  ): Response {
    const encoder = new TextEncoder();
    let open = true;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const write = (text: string) => {
          if (!open) return;
          try {
            controller.enqueue(encoder.encode(text));
          } catch {
            open = false; // the client went away between our check and the write
          }
        };
        (async () => {
          let status = 200;
          let tokens = 0;
          try {
            ({ status, tokens } = await produce(write));
          } finally {
            if (open) {
              open = false;
              try {
                controller.close();
              } catch { /* cancelled meanwhile */ }
            }
            done(status, tokens);
          }
        })();
      },
      cancel: () => {
        open = false;
        gen.ac.abort(new ClientGone());
      },
    });
    return new Response(body, { headers: { "content-type": contentType, "cache-control": "no-cache" } });
  }

  /** The whole answer as one JSON object (a completion, or an error object when it failed). */
  #whole(gen: Generation, done: (status: number, completionTokens: number) => void): Response {
    return this.#respond(gen, done, "application/json", async (write) => {
      try {
        const ran = await this.#run(gen, (chunks) => new Answer(gen.started, chunks).whole());
        if (!ran?.value) return this.#aborted(gen, write, ran?.tokens ?? 0);
        write(JSON.stringify(ran.value));
        return { status: 200, tokens: ran.tokens };
      } catch (e) {
        const err = internal(e);
        write(JSON.stringify(err.body()));
        return { status: err.status, tokens: 0 };
      }
    });
  }

  /** Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. */
  #streamed(gen: Generation, done: (status: number, completionTokens: number) => void): Response {
    return this.#respond(gen, done, "text/event-stream; charset=utf-8", async (write) => {
      const send = (data: unknown) =>
        write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
      try {
        const ran = await this.#run(gen, async (chunks) => {
          const answer = new Answer(gen.started, chunks);
          for await (const c of answer.stream()) send(c);
          return answer.finish;
        });
        if (!ran || ran.value === "abort") return this.#aborted(gen, send, ran?.tokens ?? 0);
        send("[DONE]");
        return { status: 200, tokens: ran.tokens };
      } catch (e) {
        const err = internal(e);
        send(err.body());
        send("[DONE]");
        return { status: err.status, tokens: 0 };
      }
    });
  }

  /**
   * The end of an answer whose generation was cancelled: nothing more when its client left (499), the
   * error that stopped it otherwise (the server closing: 503).
   */
  #aborted(
    gen: Generation,
    send: (data: string) => void,
    tokens: number,
  ): { status: number; tokens: number } {
    const reason = gen.ac.signal.reason;
    if (!(reason instanceof HttpError)) return { status: 499, tokens };
    send(JSON.stringify(reason.body()));
    return { status: reason.status, tokens };
  }

  /**
   * Waits for the engine, then hands `consume` the generation's chunks, counted for the metrics.
   * Returns what `consume` returned and the tokens generated, or undefined when the request was
   * cancelled while waiting (the client left or the server closed: the engine was never asked). The
   * engine is released before this returns.
   */
  async #run<T>(
    gen: Generation,
    consume: (chunks: AsyncIterable<GenerateChunk>) => Promise<T>,
  ): Promise<{ value: T; tokens: number } | undefined> {
    let release: Release;
    try {
      release = await gen.turn;
    } catch {
      return undefined;
    }
    if (gen.ac.signal.aborted) {
      release();
      return undefined;
    }
    const m = this.metrics;
    const started = performance.now();
    m.queueWait.observe((started - gen.arrived) / 1000);
    const t = { tokens: 0, firstTokens: 0, first: 0, last: 0 };
    async function* counted(): AsyncGenerator<GenerateChunk> {
      for await (const c of gen.started.chunks) {
        if (c.ids.length > 0) {
          t.last = performance.now();
          if (t.tokens === 0) {
            t.first = t.last;
            t.firstTokens = c.ids.length;
            m.timeToFirstToken.observe((t.first - gen.arrived) / 1000);
          }
          t.tokens += c.ids.length;
        }
        yield c;
      }
    }
    try {
      return { value: await consume(counted()), tokens: t.tokens };
    } finally {
      release();
      m.promptTokens += gen.started.promptTokens;
      m.completionTokens += t.tokens;
      if (t.tokens > t.firstTokens) {
        m.interTokenLatency.observe((t.last - t.first) / 1000 / (t.tokens - t.firstTokens));
      }
    }
  }
}

/** The server: {@link ApiHandler} on listeners of its own. */
class ServerImpl implements Server {
  readonly #api: ApiHandler;
  readonly #listeners: Deno.HttpServer<Deno.NetAddr>[] = [];
  #closing: Promise<void> | undefined;

  constructor(api: ApiHandler) {
    this.#api = api;
  }

  get handler(): ServeHandler {
    return this.#api.handler;
  }

  get modelId(): string {
    return this.#api.modelId;
  }

  get contextLength(): number {
    return this.#api.contextLength;
  }

  get metrics(): Metrics {
    return this.#api.metrics;
  }

  listen(options: ListenOptions = {}): Deno.HttpServer<Deno.NetAddr> {
    if (this.#api.closing) throw unavailable();
    const server = Deno.serve({
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 8000,
      onListen: options.onListen ?? (() => {}),
      // a backstop: the handler answers its own failures
      onError: (e) => internal(e).response(),
    }, this.handler);
    this.#listeners.push(server);
    return server;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#api.close();
      await Promise.all(this.#listeners.map((s) => s.shutdown()));
    })();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A generation request between admission and its answer. */
interface Generation {
  started: StartedJob;
  turn: Promise<Release>;
  ac: AbortController;
  arrived: number;
}

function budgetReport(s: EngineStats): BudgetReport {
  return {
    object: "engine.budget",
    policy: s.policy,
    budgetBytes: s.budgetBytes,
    gpuBytes: s.gpuBytes,
    peakGpuBytes: s.peakGpuBytes,
    minimumBudgetBytes: s.minimumBudgetBytes,
    fullBytes: s.fullBytes,
    expertBytes: s.expertBytes,
    expertSlots: s.expertSlots,
    residentExperts: s.residentExperts,
  };
}

/** Constant-time comparison of an offered key with the real one. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i % Math.max(1, a.length)] ?? 0) ^ b[i]!;
  return diff === 0;
}

/** Reads a JSON body of at most `limit` bytes: 413 beyond, 400 when it is not UTF-8 JSON. */
async function readJson(request: Request, limit: number): Promise<unknown> {
  const tooLarge = () =>
    new HttpError(413, `Request body too large: the limit is ${limit} bytes`, { code: "request_too_large" });
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > limit) throw tooLarge();
  const parts: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    const reader = request.body.getReader();
    for (;;) {
      let read: ReadableStreamReadResult<Uint8Array>;
      try {
        read = await reader.read();
      } catch (e) {
        throw new HttpError(499, "The client closed the connection before sending the whole body", {
          code: "client_closed_request",
          cause: e,
        });
      }
      const { done, value } = read;
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel();
        throw tooLarge();
      }
      parts.push(value);
    }
  }
  if (size === 0) throw new HttpError(400, "Missing body: expected a JSON object", { code: "invalid_json" });
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.byteLength;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "Invalid body: not UTF-8 text", { code: "invalid_json" });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `Invalid JSON body: ${(e as Error).message}`, { code: "invalid_json" });
  }
}
