/**
 * Chat templates rendered with `@huggingface/jinja`, within limits: a template comes with the checkpoint
 * and may loop for ever (`{% for i in range(10**9) %}`) or build gigabytes, inside a server request.
 *
 * The render runs on a subclass of the library's interpreter that, at every evaluation and loop
 * iteration, checks a deadline (on the clock every 256 of them) and the size of what was evaluated (a string's characters, a list's
 * or mapping's items), and refuses before the call a number argument that would size something in one
 * step (`range(10**9)`, `indent(10**9)`, `tojson(indent=10**9)`): {@link TEMPLATE_LIMITS}. What remains:
 * one call whose result is the product of two allowed sizes (`s.replace("", t)` with long `s` and `t`,
 * joining many long strings) can build one string up to V8's limit (2^29 characters) before its size is
 * checked; the deadline and the checks stop the render right after.
 *
 * @module
 */
import { Environment, Interpreter, parse, Template, tokenize } from "@huggingface/jinja";

/** Bounds of one render. */
export interface TemplateLimits {
  /** Longest render, in milliseconds. */
  milliseconds: number;
  /** Most characters of any string the template makes, its output included. */
  characters: number;
  /** Most items of any list or mapping it makes, and the largest number argument of a call. */
  items: number;
}

/**
 * The default bounds: real chat templates render in a few milliseconds and make prompts of at most
 * a few MiB (a context of 2^20 tokens).
 */
export const TEMPLATE_LIMITS: TemplateLimits = { milliseconds: 1000, characters: 8 << 20, items: 1 << 18 };

/** A render stopped at a limit. */
export class TemplateLimitError extends Error {
  /** Creates the error; `message` says which limit. */
  constructor(message: string) {
    super(message);
    this.name = "TemplateLimitError";
  }
}

type Program = ReturnType<typeof parse>;
type Statement = Parameters<Interpreter["evaluate"]>[0];
type RuntimeValue = ReturnType<Interpreter["evaluate"]>;
/** Two private methods of the interpreter, taken over below: a call's arguments, a block of statements. */
interface Internals {
  evaluateArguments(args: unknown[], environment: Environment): [RuntimeValue[], Map<string, RuntimeValue>];
  evaluateBlock(statements: unknown[], environment: Environment): RuntimeValue;
}

/** Evaluations between two looks at the clock. */
const CLOCK_EVERY = 256;

/** `strftime_now` as the library defines it, reached through a template since it is not exported. */
const STRFTIME = new Template("{{ strftime_now(format) }}");

/** The interpreter with the checks of {@link TemplateLimits}. */
class BoundedInterpreter extends Interpreter {
  readonly #limits: TemplateLimits;
  readonly #deadline: number;
  #evaluations = 0;

  constructor(environment: Environment, limits: TemplateLimits) {
    super(environment);
    this.#limits = limits;
    this.#deadline = performance.now() + limits.milliseconds;
  }

  /** Stands in for the interpreter's private `evaluateArguments` (see the prototype below). */
  boundedEvaluateArguments(
    args: unknown[],
    environment: Environment,
  ): ReturnType<Internals["evaluateArguments"]> {
    const evaluated = BASE.evaluateArguments.call(this, args, environment);
    for (const v of evaluated[0]) this.#checkArgument(v);
    for (const v of evaluated[1].values()) this.#checkArgument(v);
    return evaluated;
  }

  /** Stands in for the private `evaluateBlock`: once per loop iteration, also of an empty body. */
  boundedEvaluateBlock(statements: unknown[], environment: Environment): RuntimeValue {
    this.#tick();
    return BASE.evaluateBlock.call(this, statements, environment);
  }

  override evaluate(statement: Statement, environment: Environment): RuntimeValue {
    this.#tick();
    const value = super.evaluate(statement, environment);
    this.#checkSize(value);
    return value;
  }

  #tick(): void {
    if (++this.#evaluations % CLOCK_EVERY === 0 && performance.now() > this.#deadline) {
      throw new TemplateLimitError(`rendering took longer than ${this.#limits.milliseconds} ms`);
    }
  }

  #checkSize(value: RuntimeValue): void {
    const v: unknown = value.value;
    if (typeof v === "string" && v.length > this.#limits.characters) {
      throw new TemplateLimitError(
        `a string of ${v.length} characters, the limit is ${this.#limits.characters}`,
      );
    }
    const items = Array.isArray(v) ? v.length : v instanceof Map ? v.size : 0;
    if (items > this.#limits.items) {
      throw new TemplateLimitError(`a collection of ${items} items, the limit is ${this.#limits.items}`);
    }
  }

  #checkArgument(value: RuntimeValue): void {
    const v: unknown = value.value;
    if (typeof v === "number" && Math.abs(v) > this.#limits.items) {
      throw new TemplateLimitError(`a number argument of ${v}, the limit is ${this.#limits.items}`);
    }
  }
}

/** The library's private methods that {@link BoundedInterpreter} stands in for. */
const BASE = Interpreter.prototype as unknown as Internals;
if (typeof BASE.evaluateArguments !== "function" || typeof BASE.evaluateBlock !== "function") {
  throw new Error("@huggingface/jinja changed: Interpreter.evaluateArguments or evaluateBlock is gone");
}
// On the prototype, not on each instance: own properties would slow every evaluation down 4 times.
Object.assign(BoundedInterpreter.prototype, {
  evaluateArguments: BoundedInterpreter.prototype.boundedEvaluateArguments,
  evaluateBlock: BoundedInterpreter.prototype.boundedEvaluateBlock,
});

/** `range` as Python's, refusing more than `limit` items before making them. */
function boundedRange(limit: number) {
  return (start: number, stop?: number, step = 1): number[] => {
    if (stop === undefined) [start, stop] = [0, start];
    if (step === 0) throw new Error("range() step must not be zero");
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if (n > limit) throw new TemplateLimitError(`range() of ${n} items, the limit is ${limit}`);
    return Array.from({ length: n }, (_, i) => start + i * step);
  };
}

/** A parsed chat template, rendered within {@link TemplateLimits}. */
export class ChatTemplate {
  readonly #program: Program;

  /**
   * Parses `source` as `Template` of `@huggingface/jinja` does (`lstrip_blocks`, `trim_blocks`).
   * @throws {Error} when it does not parse
   */
  constructor(source: string) {
    this.#program = parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }));
  }

  /**
   * Renders with `items` (`messages`, `add_generation_prompt`, special tokens) and the library's
   * globals; `range` refuses more than `limits.items` items.
   * @throws {TemplateLimitError} at a limit; {@link Error} for the template's own errors
   */
  render(items: Record<string, unknown>, limits: TemplateLimits = TEMPLATE_LIMITS): string {
    const env = new Environment();
    // the globals of the library's setupGlobals (not exported), with a bounded range
    const globals: Record<string, unknown> = {
      false: false,
      true: true,
      none: null,
      False: false,
      True: true,
      None: null,
      raise_exception: (message: string) => {
        throw new Error(message);
      },
      range: boundedRange(limits.items),
      strftime_now: (format: string) => STRFTIME.render({ format }),
    };
    for (const [key, value] of Object.entries({ ...globals, ...items })) env.set(key, value);
    const out = new BoundedInterpreter(env, limits).run(this.#program).value;
    if (typeof out !== "string") throw new Error("The template did not render to text");
    return out;
  }
}
