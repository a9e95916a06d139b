/**
 * HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
 * OpenAI's API gives for the same fault, and the mapping from the engine's typed errors.
 *
 * @module
 */
import {
  BudgetError,
  EngineClosedError,
  OptionError,
  RequestError,
  SwapMoeError,
  TokenizerError,
} from "../errors.ts";

/** The body of every error response. */
export interface OpenAiErrorBody {
  error: {
    message: string;
    /** `invalid_request_error` for 4xx, `server_error` for 5xx, as OpenAI's API. */
    type: string;
    /** The request field at fault, or null. */
    param: string | null;
    /** A machine-readable reason (`model_not_found`, `queue_full`, …), or null. */
    code: string | null;
  };
}

/** Options of {@link HttpError}. */
export interface HttpErrorOptions extends ErrorOptions {
  param?: string;
  code?: string;
  /** Extra response headers (`Allow`, `Retry-After`, `WWW-Authenticate`). */
  headers?: Record<string, string>;
}

/** A request the server refuses or cannot serve; becomes a response in OpenAI's error shape. */
export class HttpError extends Error {
  readonly status: number;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  /** Creates an error answered with `status`. */
  constructor(status: number, message: string, options: HttpErrorOptions = {}) {
    super(message, options);
    this.name = "HttpError";
    this.status = status;
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.headers = options.headers ?? {};
  }

  /** OpenAI's error object for this error. */
  body(): OpenAiErrorBody {
    return {
      error: {
        message: this.message,
        type: this.status >= 500 ? "server_error" : "invalid_request_error",
        param: this.param,
        code: this.code,
      },
    };
  }

  /** The JSON response. */
  response(): Response {
    return Response.json(this.body(), { status: this.status, headers: this.headers });
  }
}

/** The server is shutting down or the engine was closed. */
export function unavailable(message = "The server is shutting down"): HttpError {
  return new HttpError(503, message, { code: "server_shutting_down" });
}

/**
 * Maps an error thrown while a request is validated or started: a request field at fault is answered
 * with its status (400, 404 for an unknown model), the engine's option and template errors are the
 * client's (400), a closed engine is 503, anything else is the server's (500). Errors thrown once
 * generation runs are always 500: use `internal` for them.
 */
export function fromEngineError(e: unknown): HttpError {
  if (e instanceof HttpError || e instanceof RequestError) return internal(e);
  if (e instanceof OptionError || e instanceof TokenizerError) {
    return new HttpError(400, withoutPaths(e.message), { code: "invalid_value", cause: e });
  }
  if (e instanceof BudgetError) {
    return new HttpError(400, withoutPaths(e.message), { param: "budget", code: "budget_too_small" });
  }
  if (e instanceof EngineClosedError) return unavailable(e.message);
  return internal(e);
}

/** 500 carrying the message of whatever went wrong; an HTTP or request error keeps its own status. */
export function internal(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  // built from the request alone: its message is sent as it is
  if (e instanceof RequestError) {
    return new HttpError(e.status, e.message, { param: e.param ?? undefined, code: e.code, cause: e });
  }
  if (e instanceof EngineClosedError) return unavailable(e.message);
  const message = e instanceof SwapMoeError
    ? `${e.name}: ${e.message}`
    : `Internal server error: ${e instanceof Error ? e.message : String(e)}`;
  return new HttpError(500, withoutPaths(message), { code: "internal_error", cause: e });
}

/**
 * `message` with every absolute path cut to its last component: an engine error names the file at
 * fault (`/srv/models/x/chat_template.jinja`), and a client may learn the file, not where the server
 * keeps its models (`chat_template.jinja`).
 */
export function withoutPaths(message: string): string {
  return message.replace(/(^|[\s("'`=:])\/(?:[^\s/"'`()]+\/)+([^\s/"'`()]*)/g, "$1$2");
}
