/**
 * Typed errors. Every error the engine throws on purpose is a {@link SwapMoeError}; the subclass says
 * which part refused and the message says what is wrong and what would be right, in std's manner:
 * capitalised, no trailing period, the detail after a colon.
 *
 * @module
 */

/** Base class of every error thrown on purpose by swapmoe. */
export class SwapMoeError extends Error {
  /** Creates an error; `cause` keeps the underlying error, if any. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A checkpoint file or folder is missing, malformed, or disagrees with its `config.json`. */
export class CheckpointError extends SwapMoeError {
  /** The file at fault (absolute or as given), when one file is at fault. */
  readonly file: string | undefined;
  /** Creates a checkpoint error naming `file`. */
  constructor(message: string, file?: string, options?: ErrorOptions) {
    super(file ? `${message} (in ${file})` : message, options);
    this.file = file;
  }
}

/** `config.json` is missing, malformed, unsupported or out of range. */
export class ConfigError extends CheckpointError {}

/** An engine or request option is invalid; raised before any GPU work. */
export class OptionError extends SwapMoeError {}

/**
 * A field of an OpenAI-style request (`engine.chat.completions.create`, `engine.completions.create`,
 * the server's routes) is invalid or unsupported. `param` names the field, `code` says what is wrong
 * in OpenAI's terms (`invalid_value`, `invalid_type`, `context_length_exceeded`, `model_not_found`, …),
 * and `status` is the HTTP status the server answers with: 400, or 404 for a model it does not serve.
 */
export class RequestError extends OptionError {
  /** The request field at fault (`temperature`, `messages[0].content`), or null. */
  readonly param: string | null;
  /** A machine-readable reason, as OpenAI's API gives it. */
  readonly code: string;
  /** The HTTP status for this fault: 400, or 404 for an unknown model. */
  readonly status: 400 | 404;
  /** Creates a request error for `param`; `code` defaults to `invalid_value`, `status` to 400. */
  constructor(
    message: string,
    options: ErrorOptions & { param?: string | null; code?: string; status?: 400 | 404 } = {},
  ) {
    super(message, options);
    this.param = options.param ?? null;
    this.code = options.code ?? "invalid_value";
    this.status = options.status ?? 400;
  }
}

/** The requested GPU memory budget cannot be met. */
export class BudgetError extends SwapMoeError {}

/** No WebGPU adapter or device could be obtained. */
export class WebGpuUnavailableError extends SwapMoeError {}

/** The GPU device was lost (destroyed, reset or out of memory). */
export class DeviceLostError extends SwapMoeError {}

/** A GPU validation or out-of-memory error surfaced by an error scope, naming the label at fault. */
export class GpuError extends SwapMoeError {}

/** A WGSL shader failed to compile; the message carries the compiler's messages. */
export class ShaderCompileError extends GpuError {}

/**
 * The model computed logits that are NaN or infinite: its weights hold NaN or infinite values, or its
 * activations overflowed. Raised by `generate` (the sampler flags the row on the GPU), `forward` and
 * perplexity, instead of tokens or numbers that mean nothing.
 */
export class NonFiniteError extends SwapMoeError {
  /** Creates the error; `where` says which logits, e.g. `"for generated token 3"`. */
  constructor(where: string, options?: ErrorOptions) {
    super(
      `Non-finite logits (NaN or infinity) ${where}: the checkpoint's weights likely hold NaN or infinite values, or the activations overflowed; check that every tensor of the checkpoint is finite`,
      options,
    );
  }
}

/** The engine was used after `close()`. */
export class EngineClosedError extends SwapMoeError {}

/** The tokenizer files are missing or malformed, or a chat template failed to render. */
export class TokenizerError extends SwapMoeError {}

/**
 * A model named `org/name` could not be fetched from the Hugging Face hub or found in its cache: the hub
 * refused (`status` holds its HTTP status), could not be reached (`unreachable`), or a download failed
 * verification.
 */
export class HubError extends SwapMoeError {
  /** The hub's HTTP status, when it answered with an error. */
  readonly status: number | undefined;
  /** The hub could not be reached, or answered with a server error: a cached copy may stand in. */
  readonly unreachable: boolean;
  /** Creates a hub error; `status` is the HTTP status that refused, if any. */
  constructor(
    message: string,
    options: ErrorOptions & { status?: number; unreachable?: boolean } = {},
  ) {
    super(message, options);
    this.status = options.status;
    this.unreachable = options.unreachable ?? false;
  }
}
