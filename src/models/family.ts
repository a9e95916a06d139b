/**
 * What differs from one model family to the next, and nothing else. The engine
 * (`src/runtime/engine.ts`) runs every family through these interfaces:
 *
 * - a {@link Family} reads `config.json` into an {@link Architecture}: the model's constants (its
 *   spec) and what follows from them alone — one expert's matrices, the run-state buffers of a run
 *   shape, the tensors a checkpoint must hold;
 * - the architecture builds the {@link ModelProgram}: the recorded dispatches of one pass over the
 *   model, which the engine replays.
 *
 * Adding a family is a folder under `src/models/` that exports a {@link Family}, and one line in
 * `src/models/registry.ts`.
 *
 * @module
 */
import type { TensorInfo } from "../checkpoint/safetensors.ts";
import type { Dispatch, KernelContext } from "../gpu/dispatch.ts";
import type { Allocation, TrackedBuffer } from "../gpu/memory.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import { CheckpointError } from "../errors.ts";
import { SAMPLING_PARAMS_BYTES } from "../kernels/sample.ts";
import { ROW_BYTES } from "../kernels/step.ts";
import { matrixLayout, type Precision } from "../quant/formats.ts";

/** The constants every family's spec has; a family's spec adds its own (with `config.json`'s names). */
export interface SpecBase {
  /** `config.json`'s `model_type`. */
  readonly modelType: string;
  /** V: the vocabulary size (`vocab_size`), rows of the embedding and of the head. */
  readonly vocabSize: number;
  /** E: experts per MoE layer. */
  readonly numExperts: number;
  /** K: experts each token is routed to. */
  readonly topK: number;
  /** Positions the model was trained for (`max_position_embeddings`, Switch's `n_positions`). */
  readonly maxPositionEmbeddings: number;
  /** The beginning-of-sequence id (`bos_token_id`), when the config names one. */
  readonly bosTokenId: number | undefined;
  /** Every id that ends generation. */
  readonly eosTokenIds: readonly number[];
}

/** One weight matrix of an expert: [rows, cols], row-major, at whatever precision a copy holds it. */
export interface ExpertMatrix {
  /** Its role, for labels and errors (`gate`, `up`, `down`; Switch's `wi`, `wo`). */
  readonly name: string;
  readonly rows: number;
  readonly cols: number;
  /** Whether a bias of `rows` values (bf16) goes with it (gpt-oss). */
  readonly bias?: boolean;
}

/** Bytes of one copy of an expert (all its matrices) at precision `p`: what one expert slot of that tier holds. */
export function expertCopyBytes(matrices: readonly ExpertMatrix[], p: Precision): number {
  return matrices.reduce((a, m) => a + matrixLayout(p, m.rows, m.cols, m.bias).bytes, 0);
}

/**
 * A piece of one expert matrix as the checkpoint stores it: `bytes` bytes of `tensor` from byte
 * `offset`, which go at byte `at` of the matrix in its native layout (src/quant/formats.ts). A bf16
 * matrix is one whole tensor; gpt-oss's are slices of tensors that hold every expert of a layer.
 */
export interface TensorPiece {
  readonly tensor: string;
  readonly offset: number;
  readonly bytes: number;
  readonly at: number;
}

/** Sizes of the run state: what the options ask the GPU to hold besides the weights. */
export interface RunShape {
  /** Most rows (tokens) per pass of the model: the prefill chunk. */
  readonly maxRows: number;
  /** Positions the KV caches hold (and, for an encoder-decoder, the longest encoder input). */
  readonly contextLength: number;
  /** Most tokens one generation writes on the GPU (a slot of the sampler's output buffer). */
  readonly maxGenerated: number;
  /**
   * Sequences decoded together, each in a slot of its own: its region of the KV caches, its sampler
   * settings and its generated tokens (`maxBatchSequences`).
   */
  readonly sequences: number;
}

/**
 * Most logits rows a pass computes: a generation's calls sample at most `CALL_ROWS` rows (32) and a
 * prompt chunk one, so only `forward`, which returns every row's logits, needs more, and it runs its
 * rows in passes of this many. (At OLMoE's vocabulary, 512 rows of f32 logits would be 103 MB, and as
 * much again for their readback.)
 */
export const LOGIT_ROWS = 64;

/** Logits rows of `shape`'s passes ({@link LOGIT_ROWS} at most). */
export function logitRows(shape: RunShape): number {
  return Math.min(shape.maxRows, LOGIT_ROWS);
}

/** A dense weight buffer: the tensors named in `parts`, concatenated as stored. */
export interface DenseWeight {
  /** The buffer's name, which the program asks for (a tensor name, or e.g. `layer0.qkv`). */
  readonly name: string;
  readonly parts: readonly string[];
}

/** The checkpoint's tensors for one model, checked against its config. */
export interface ModelTensors {
  /** Weights uploaded once (everything but the routed experts), each buffer once. */
  readonly dense: readonly DenseWeight[];
  /** Where matrix `m` (in {@link Architecture.expertMatrices} order) of expert `e` of MoE layer `l` is stored. */
  expertPieces(l: number, e: number, m: number): readonly TensorPiece[];
}

/** The pieces of an expert matrix stored whole as one tensor (bf16 checkpoints). */
export function wholeTensor(tensor: string, bytes: number): TensorPiece[] {
  return [{ tensor, offset: 0, bytes, at: 0 }];
}

/** The dispatches of one block around its routed experts, split where exact (`lru`) routing reads back. */
export interface LayerDispatches {
  /** Attention and, for a sparse block, the norm, router and routing statistics. */
  readonly beforeExperts: Dispatch[];
  /** The routed experts: they read their weights through the slot table. */
  readonly experts: Dispatch[];
  /** What follows them: a shared expert, or a dense block's MLP. */
  readonly afterExperts: Dispatch[];
  /** The MoE layer (router) index, or −1 for a dense block. */
  readonly moeLayer: number;
}

/** One pass over a stack of blocks: what comes before the blocks, the blocks, what comes after. */
export interface Pass {
  readonly pre: Dispatch[];
  readonly layers: LayerDispatches[];
  readonly post: Dispatch[];
}

/** Every dispatch of `pass`, in order. */
export function passDispatches(pass: Pass): Dispatch[] {
  return [
    ...pass.pre,
    ...pass.layers.flatMap((l) => [...l.beforeExperts, ...l.experts, ...l.afterExperts]),
    ...pass.post,
  ];
}

/** The run-state buffers the engine itself reads and writes. */
export interface ProgramIo {
  /** [passRows] u32: the token ids of a pass's rows that read theirs from the host. */
  readonly ids: GPUBuffer;
  /** [passRows] `Row` (src/kernels/step.ts): each row's slot, position, attention split and sampled token. */
  readonly rows: GPUBuffer;
  /** [maxRows, V] f32: the logits rows of a pass (`headRows` of them, from row 0). */
  readonly logits: GPUBuffer;
  /** [sequences, maxGenerated] u32: where the sampler writes token g of the sequence in slot s. */
  readonly generated: GPUBuffer;
  /** [sequences] sampler `Params` (`packSampling`), one per slot, read-only storage in the shader. */
  readonly samplingParams: GPUBuffer;
  /** [moeLayers, E, 4] f32: routing statistics summed since the last copy (router.wgsl `accumulate`). */
  readonly stats: GPUBuffer;
  /** [rows, K] u32: the routed experts of the last MoE layer that ran (read back by exact `lru`). */
  readonly topkIds: GPUBuffer;
}

/** What a model is built from. */
export interface BuildInit {
  readonly ctx: KernelContext;
  /** The dense weight buffers, by {@link DenseWeight.name}. */
  readonly weights: ReadonlyMap<string, TrackedBuffer>;
  /** The run-state buffers, by the names of {@link Architecture.runState}. */
  readonly state: ReadonlyMap<string, TrackedBuffer>;
  readonly cache: ExpertCache;
  readonly shape: RunShape;
  /** Route among resident experts only (masked gating: `static`, `swapmoe`). */
  readonly masked: boolean;
  /** The engine options, for a family's own (see {@link Family.optionKeys}). */
  readonly options: Readonly<Record<string, unknown>>;
}

/** A model on the GPU: recorded passes the engine replays. */
export interface ModelProgram {
  /**
   * Encoder-decoder models only: the pass over the prompt whose output the decoder attends to. A
   * decoder-only model has none, and its prompt goes through {@link ModelProgram.decoder}.
   */
  readonly encoder?: Pass;
  /** The pass that reads and extends the KV caches, ending in the logits rows. */
  readonly decoder: Pass;
  /** Samples each logits row into its sequence's `generated[gen]` (its `Row`). */
  readonly sample: Dispatch;
  readonly io: ProgramIo;
  /** Records every dispatch again (after the expert slots were resized: their bind groups changed). */
  record(cache: ExpertCache, masked: boolean): Promise<void>;
  /** Called before the first call of each pass over `rows` rows (not before its later chunks). */
  startPass?(queue: GPUQueue, pass: Pass, rows: number): void;
}

/** A model of one family, read from its `config.json`. */
export interface Architecture<S extends SpecBase = SpecBase> {
  /** The constants (what `engine.spec` shows). */
  readonly spec: S;
  /** MoE layers (routers), in router order. */
  readonly moeLayers: number;
  /** How per-router lists (`residentExperts`, a profile) are ordered, for messages: "one per MoE layer". */
  readonly routerOrder: string;
  /** One routed expert's matrices, in the order the expert slots hold them. */
  readonly expertMatrices: readonly ExpertMatrix[];
  /** The precision the checkpoint stores the routed experts at: bf16, or gpt-oss's mxfp4. */
  readonly nativePrecision: Precision;
  /** The longest context the model takes, when it has a hard limit (e.g. RoPE's trained positions). */
  readonly maxContext: number | undefined;
  /** Encoder-decoder models: the first decoder input (`decoder_start_token_id`); undefined otherwise. */
  readonly decoderStartTokenId: number | undefined;
  /** Params blocks the recorded dispatches take in the params arena, at most. */
  readonly paramSlots: number;
  /**
   * The most sequences it decodes together ({@link RunShape.sequences}), when it has a limit: an
   * encoder-decoder's cross-attention keys are one sequence's.
   */
  readonly maxSequences?: number;
  /**
   * The checkpoint's tensors for this model, checked: present, of the shape the config implies, bf16.
   * @throws {CheckpointError} naming the tensor and the file
   */
  tensors(table: ReadonlyMap<string, TensorInfo>, dir: string): ModelTensors;
  /** Most rows one pass runs at `shape`: the prefill chunk, or a whole encoder input. */
  passRows(shape: RunShape): number;
  /** The run-state buffers of `shape`: the one list that the footprint counts and the engine allocates. */
  runState(shape: RunShape): Allocation[];
  /** Records the model's passes over the buffers the engine allocated. */
  build(init: BuildInit): Promise<ModelProgram>;
}

/** A model family: one or more `model_type`s that share an architecture. */
export interface Family<S extends SpecBase = SpecBase> {
  /** The `model_type`s it reads. */
  readonly modelTypes: readonly string[];
  /** Engine options only this family takes (validated by {@link Family.checkOptions}). */
  readonly optionKeys: readonly string[];
  /**
   * Reads a parsed `config.json`.
   * @throws {ConfigError} naming the field, for anything missing, malformed or unsupported
   */
  architecture(json: Readonly<Record<string, unknown>>, file: string): Architecture<S>;
  /** Validates this family's own options; throws an OptionError naming the option. */
  checkOptions(options: Readonly<Record<string, unknown>>): void;
  /** One line for people: `mixtral: 4 layers, 4 with 16 experts, top-2`. */
  describe(spec: S): string;
}

/**
 * Checks every expected tensor: present, of the expected shape, bf16 and 2-byte aligned.
 * `dtypeHint(dtype)` may add a family's advice to the dtype error (e.g. how to convert).
 * Extra tensors (rotary caches and the like) are ignored.
 * @throws {CheckpointError} naming the tensor and the file
 */
export function checkTensorShapes(
  modelType: string,
  expected: ReadonlyMap<string, readonly number[]>,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
  dtypeHint: (dtype: string) => string = () => "",
): void {
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) {
      throw new CheckpointError(
        `Missing tensor for ${modelType}: "${name}" (expected shape [${shape}] from config.json)`,
        dir,
      );
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `Tensor shape disagrees with config.json: "${name}" is [${t.shape}], expected [${shape}]`,
        t.file,
      );
    }
    if (t.dtype !== "BF16") {
      throw new CheckpointError(
        `Unsupported dtype: "${name}" is ${t.dtype}, supported is BF16${dtypeHint(t.dtype)}`,
        t.file,
      );
    }
    // the format allows any offset; safetensors' writers pad the header so that data is 8-aligned
    if (t.byteOffset % 2 !== 0) {
      throw new CheckpointError(
        `Unaligned tensor: "${name}" starts at byte ${t.byteOffset}, not a multiple of 2 as bf16 needs; re-save the checkpoint with safetensors, which pads its header`,
        t.file,
      );
    }
  }
  checkLayerCount(expected, tensors);
}

/** A layer of a stack: `model.layers.3.…` is layer 3 of `model.layers` (Switch: `encoder.block.3.…`). */
const LAYER = /^(.+?)\.(\d+)\./;

/**
 * Refuses a checkpoint with more layers than config.json describes (they would be left out in
 * silence): for each stack of numbered layers among the `expected` names, a tensor of the checkpoint
 * numbered past the last expected layer is an error naming those layers.
 */
function checkLayerCount(
  expected: ReadonlyMap<string, readonly number[]>,
  tensors: ReadonlyMap<string, TensorInfo>,
): void {
  const described = new Map<string, number>(); // stack → layers config.json describes
  for (const name of expected.keys()) {
    const m = LAYER.exec(name);
    if (m) described.set(m[1]!, Math.max(described.get(m[1]!) ?? 0, Number(m[2]) + 1));
  }
  const extra = new Map<string, Set<number>>(); // stack → layers past them
  let first: TensorInfo | undefined;
  let count = 0;
  for (const t of tensors.values()) {
    const m = LAYER.exec(t.name);
    const n = m ? described.get(m[1]!) : undefined;
    if (!m || n === undefined || Number(m[2]) < n) continue;
    if (!extra.has(m[1]!)) extra.set(m[1]!, new Set());
    extra.get(m[1]!)!.add(Number(m[2]));
    first ??= t;
    count++;
  }
  if (!first) return;
  const stacks = [...extra].map(([stack, layers]) => {
    const n = described.get(stack)!;
    return `it holds ${layerList(stack, [...layers])}, config.json describes ${n} layer${
      n === 1 ? "" : "s"
    } (${layerList(stack, [0, n - 1])})`;
  });
  throw new CheckpointError(
    `Checkpoint has more layers than config.json describes: ${
      stacks.join("; ")
    }; ${count} tensors would be left out, e.g. "${first.name}"; correct config.json's layer count, or use the weights it was written with`,
    first.file,
  );
}

/** `model.layers.4`, `model.layers.4 to model.layers.9` (a run), or a list of a few. */
function layerList(stack: string, layers: number[]): string {
  const s = [...new Set(layers)].sort((a, b) => a - b);
  const name = (i: number) => `${stack}.${i}`;
  if (s.length === 1) return name(s[0]!);
  if (s[s.length - 1]! - s[0]! === s.length - 1) return `${name(s[0]!)} to ${name(s[s.length - 1]!)}`;
  return s.length <= 6
    ? s.map(name).join(", ")
    : `${s.slice(0, 5).map(name).join(", ")}, … ${name(s.at(-1)!)}`;
}

/** Buffer usage of the run state's activations: read and written by kernels, cleared and copied by the engine. */
export const ACTIVATION = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** An activation buffer of `words` 4-byte words. */
export function activation(name: string, words: number): Allocation {
  return { name, bytes: words * 4, usage: ACTIVATION, category: "activations" };
}

/** The buffer named `name` in `buffers` (run state or weights), or an internal error naming it. */
export function bufferNamed(buffers: ReadonlyMap<string, TrackedBuffer>, name: string): GPUBuffer {
  const t = buffers.get(name);
  if (!t) throw new Error(`Internal: no GPU buffer named ${name}`);
  return t.buffer;
}

/**
 * The run state of the rows and their sequences, which every family's embedding and sampler read:
 * `rows` [passRows] `Row` (src/kernels/step.ts), and per slot its generated tokens (`generated`
 * [sequences, maxGenerated] u32) and sampler settings (`sampling` [sequences] × `Params`).
 */
export function sequenceState(shape: RunShape, passRows: number): Allocation[] {
  const table = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  return [
    { name: "rows", bytes: passRows * ROW_BYTES, usage: table, category: "activations" },
    activation("generated", shape.sequences * shape.maxGenerated),
    {
      name: "sampling",
      bytes: shape.sequences * SAMPLING_PARAMS_BYTES,
      usage: table,
      category: "activations",
    },
  ];
}
