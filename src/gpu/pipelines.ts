/**
 * Shader loading and the pipeline cache, keyed by (shader file, entry point, override constants).
 * Every shader is `shaders/common.wgsl` followed by its own file, with the shared libraries it
 * includes (`//!include reduce.wgsl` → `shaders/lib/reduce.wgsl`). Compilation errors surface at
 * creation as {@link ShaderCompileError} naming the shader.
 *
 * @module
 */
import { DeviceLostError, ShaderCompileError } from "../errors.ts";

const SHADER_DIR = new URL("../../shaders/", import.meta.url);
const sources = new Map<string, Promise<string>>();

async function readShader(name: string): Promise<string> {
  const url = new URL(name, SHADER_DIR);
  if (url.protocol === "file:") {
    try {
      return await Deno.readTextFile(url);
    } catch (e) {
      throw new ShaderCompileError(`Cannot read shader ${name}: ${(e as Error).message}`, { cause: e });
    }
  }
  const res = await fetch(url);
  if (!res.ok) throw new ShaderCompileError(`Cannot fetch shader ${name}: HTTP ${res.status}`);
  return await res.text();
}

/** A line `//!include <file>` is replaced by `shaders/lib/<file>` (each library once per shader). */
const INCLUDE = /^\/\/!include ([\w.-]+)$/gm;

/**
 * The WGSL source of `shaders/<name>`: the common prelude, then the file with its `//!include`
 * lines replaced by the libraries they name (shared helpers such as the workgroup reductions of
 * `lib/reduce.wgsl`). Cached per process.
 */
export function shaderSource(name: string): Promise<string> {
  let s = sources.get(name);
  if (!s) {
    s = (async () => {
      const [prelude, body] = await Promise.all([readShader("common.wgsl"), readShader(name)]);
      const libs = [...new Set([...body.matchAll(INCLUDE)].map((m) => m[1]!))];
      const text = new Map(
        await Promise.all(libs.map(async (l) => [l, await readShader(`lib/${l}`)] as const)),
      );
      const seen = new Set<string>();
      const expanded = body.replace(INCLUDE, (_, lib: string) => {
        if (seen.has(lib)) return "";
        seen.add(lib);
        return text.get(lib)!;
      });
      return `${prelude}\n${expanded}`;
    })();
    sources.set(name, s);
  }
  return s;
}

/** Override constants of a pipeline (WGSL `override` declarations). */
export type Constants = Record<string, number>;

/** Compiles and caches compute pipelines for one device. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #modules = new Map<string, Promise<GPUShaderModule>>();
  readonly #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  #lost: DeviceLostError | undefined;

  /** A cache for `device`. */
  constructor(device: GPUDevice) {
    this.#device = device;
    device.lost.then((i) => {
      this.#lost = new DeviceLostError(`The GPU device was lost (${i.reason}): ${i.message || "no message"}`);
    });
  }

  /** A failure on a lost device is the loss, not a shader's fault: throws {@link DeviceLostError} then. */
  async #lostOr(error: Error): Promise<never> {
    // a destroyed device's promise may settle just after the failure it caused
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#device.lost, new Promise((r) => (timer = setTimeout(r, 0)))]);
    clearTimeout(timer);
    throw this.#lost ?? error;
  }

  #module(file: string, source?: string): Promise<GPUShaderModule> {
    let m = this.#modules.get(file);
    if (!m) {
      m = (async () => {
        if (this.#lost) throw this.#lost;
        const code = source ?? await shaderSource(file);
        this.#device.pushErrorScope("validation");
        const module = this.#device.createShaderModule({ label: file, code });
        const info = await module.getCompilationInfo();
        const scoped = await this.#device.popErrorScope();
        const errors = info.messages.filter((msg) => msg.type === "error");
        if (errors.length > 0 || scoped) {
          const detail = errors.map((e) => `${e.lineNum}:${e.linePos} ${e.message}`).join("; ") ||
            scoped?.message;
          return await this.#lostOr(new ShaderCompileError(`Shader ${file} failed to compile: ${detail}`));
        }
        return module;
      })();
      this.#modules.set(file, m);
    }
    return m;
  }

  /** The pipeline for `file`'s `entry` with `constants`, compiled once. `source` overrides the file (tests). */
  get(file: string, entry = "main", constants: Constants = {}, source?: string): Promise<GPUComputePipeline> {
    const key = `${file}#${entry}#${JSON.stringify(constants)}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      p = (async () => {
        const module = await this.#module(file, source);
        this.#device.pushErrorScope("validation");
        const pipeline = await this.#device.createComputePipelineAsync({
          label: `${file}:${entry}`,
          layout: "auto",
          compute: { module, entryPoint: entry, constants },
        }).catch((e: Error) =>
          this.#lostOr(new ShaderCompileError(`Pipeline ${file}:${entry} failed: ${e.message}`, { cause: e }))
        );
        const err = await this.#device.popErrorScope();
        if (err) {
          return await this.#lostOr(
            new ShaderCompileError(`Pipeline ${file}:${entry} failed: ${err.message}`),
          );
        }
        return pipeline;
      })();
      this.#pipelines.set(key, p);
    }
    return p;
  }
}
