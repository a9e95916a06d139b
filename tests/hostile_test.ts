/**
 * Hostile checkpoints: each case copies a tiny fixture into a temporary folder, corrupts one thing, and
 * asserts that `createEngine` refuses it with the right error class and a message naming the file and
 * the problem — before any GPU work (no adapter is requested) and without leaving a file mapped.
 *
 * Set `SWAPMOE_HOSTILE_LOG=path` to write every case's error (class and message) to `path`.
 */
import assert from "node:assert/strict";
import {
  BudgetError,
  CheckpointError,
  ConfigError,
  createEngine,
  type EngineOptions,
  type SwapMoeError,
  TokenizerError,
} from "../mod.ts";
import {
  assertRejects,
  copyFixture,
  editHeader,
  editJson,
  encodeSafetensors,
  entries,
  FIXTURES,
  mappedUnder,
  readSafetensors,
  spyOnAdapters,
} from "./support/hostile.ts";

const SINGLE = "model.safetensors";
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";
const INDEX = "model.safetensors.index.json";
const ROUTER0 = "model.layers.0.mlp.gate.weight"; // olmoe: [16, 64]

interface Case {
  name: string;
  fixture: "tiny-olmoe" | "tiny-mixtral" | "tiny-qwen2-moe" | "tiny-qwen3-moe" | "tiny-switch";
  corrupt: (dir: string) => void | Promise<void>;
  error: typeof CheckpointError | typeof ConfigError | typeof TokenizerError | typeof BudgetError;
  /** The file the message must name, relative to the folder ("" for the folder itself). */
  file: string | null;
  parts: (string | RegExp)[];
  options?: EngineOptions;
}

/** Writes `bytes` over the whole file. */
const write = (path: string, bytes: Uint8Array) => Deno.writeFileSync(path, bytes);

/** Sets the header length field of `path` to `n`, leaving the rest. */
function setHeaderLength(path: string, n: bigint): void {
  const bytes = Deno.readFileSync(path);
  new DataView(bytes.buffer).setBigUint64(0, n, true);
  write(path, bytes);
}

/** Replaces the header text of `path` by `text` padded with spaces to the same length (data kept). */
function replaceHeaderText(path: string, text: string | Uint8Array): void {
  const { data } = readSafetensors(path);
  write(path, encodeSafetensors(text, data));
}

/** Edits one tensor entry of `path`'s header. */
function editTensor(path: string, name: string, edit: (e: Record<string, unknown>) => void): void {
  editHeader(path, (h) => {
    edit(h[name] as Record<string, unknown>);
  });
}

/** Replaces the file at `path` by a symbolic link to `target`. */
async function replaceByLink(path: string, target: string): Promise<void> {
  await Deno.remove(path);
  await Deno.symlink(target, path);
}

/** Edits config.json (the edit's return value is ignored). */
const config = (dir: string, edit: (c: Record<string, unknown>) => unknown) =>
  editJson(`${dir}/config.json`, (c) => {
    edit(c);
  });

const CASES: Case[] = [
  // ---- safetensors framing ---------------------------------------------------------------------------
  {
    name: "header length absurd (2^63)",
    fixture: "tiny-olmoe",
    corrupt: (d) => setHeaderLength(`${d}/${SINGLE}`, 1n << 63n),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header length too large"],
  },
  {
    name: "header length past end of file",
    fixture: "tiny-olmoe",
    corrupt: (d) => setHeaderLength(`${d}/${SINGLE}`, BigInt(Deno.statSync(`${d}/${SINGLE}`).size)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header extends past end of file"],
  },
  {
    name: "header not JSON",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceHeaderText(`${d}/${SINGLE}`, `{"lm_head.weight": {"dtype": "BF16", `),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header is not valid JSON"],
  },
  {
    name: "header a JSON array",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceHeaderText(`${d}/${SINGLE}`, "[1, 2, 3]"),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header is not a JSON object"],
  },
  {
    name: "header not UTF-8",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceHeaderText(`${d}/${SINGLE}`, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header is not valid UTF-8"],
  },
  {
    name: "empty shard (0 bytes)",
    fixture: "tiny-olmoe",
    corrupt: (d) => write(`${d}/${SINGLE}`, new Uint8Array(0)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["File too small for a safetensors header: 0 bytes"],
  },
  {
    name: "shard of 5 bytes",
    fixture: "tiny-olmoe",
    corrupt: (d) => write(`${d}/${SINGLE}`, new Uint8Array(5)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["File too small for a safetensors header: 5 bytes"],
  },
  {
    name: "truncated shard (half the data)",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.truncateSync(`${d}/${SINGLE}`, Deno.statSync(`${d}/${SINGLE}`).size >> 1),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor data out of bounds"],
  },
  {
    name: "truncated shard (inside the header)",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.truncateSync(`${d}/${SINGLE}`, 100),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Header extends past end of file"],
  },
  {
    name: "trailing bytes after the data",
    fixture: "tiny-olmoe",
    corrupt: (d) => {
      const b = Deno.readFileSync(`${d}/${SINGLE}`);
      write(`${d}/${SINGLE}`, new Uint8Array([...b, 0, 0, 0, 0]));
    },
    error: CheckpointError,
    file: SINGLE,
    parts: ["Unused bytes after tensor data"],
  },
  // ---- tensor entries --------------------------------------------------------------------------------
  {
    name: "unknown dtype",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.dtype = "BF17")),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Unknown dtype", '"model.norm.weight"', '"BF17"'],
  },
  {
    name: "negative dimension",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.shape = [-64])),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Invalid shape", '"model.norm.weight"', "[-64]"],
  },
  {
    name: "non-integer dimension",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.shape = [63.5])),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Invalid shape", "non-negative integers"],
  },
  {
    name: "shape a string",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.shape = "64")),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Invalid shape"],
  },
  {
    name: "data_offsets reversed",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => {
        const [a, b] = e.data_offsets as number[];
        e.data_offsets = [b, a];
      }),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Invalid data_offsets", "begin <= end"],
  },
  {
    name: "data_offsets out of bounds",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        const [name, last] = entries(h).at(-1)!;
        h[name] = { ...last, data_offsets: [last.data_offsets[0] + 2, last.data_offsets[1] + 2] };
      }),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor data out of bounds"],
  },
  {
    name: "overlapping tensors",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        // two [64] norms: the second now points at the first's bytes
        const a = h["model.layers.0.input_layernorm.weight"] as { data_offsets: number[] };
        const b = h["model.layers.0.post_attention_layernorm.weight"] as { data_offsets: number[] };
        b.data_offsets = [...a.data_offsets];
      }),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Overlapping tensors"],
  },
  {
    name: "gap between tensors (an entry removed)",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        delete h[entries(h)[3]![0]];
      }),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Gap in tensor data"],
  },
  {
    name: "shape × dtype ≠ bytes (shape grown)",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.shape = [65])),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor size mismatch", '"model.norm.weight"', "BF16 [65]"],
  },
  {
    name: "shape × dtype ≠ bytes (dtype F32)",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.dtype = "F32")),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor size mismatch"],
  },
  {
    name: "unknown key in a tensor entry",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.quantization = "q4")),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Unknown key in tensor entry", '"quantization"'],
  },
  {
    name: "__metadata__ value not a string",
    fixture: "tiny-olmoe",
    corrupt: (d) => editHeader(`${d}/${SINGLE}`, (h) => void (h.__metadata__ = { format: 1 })),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Invalid __metadata__"],
  },
  {
    name: "model.safetensors is a folder",
    fixture: "tiny-olmoe",
    corrupt: async (d) => {
      await Deno.remove(`${d}/${SINGLE}`);
      await Deno.mkdir(`${d}/${SINGLE}`);
    },
    error: CheckpointError,
    file: SINGLE,
    parts: ["Not a regular file"],
  },
  {
    name: "model.safetensors links to a device",
    fixture: "tiny-olmoe",
    corrupt: async (d) => {
      await Deno.remove(`${d}/${SINGLE}`);
      await Deno.symlink("/dev/zero", `${d}/${SINGLE}`);
    },
    error: CheckpointError,
    file: SINGLE,
    parts: ["Not a regular file"],
  },
  {
    name: "no weights at all",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.remove(`${d}/${SINGLE}`),
    error: CheckpointError,
    file: "",
    parts: ["No weights found", INDEX, SINGLE],
  },
  // ---- the index of a sharded checkpoint -------------------------------------------------------------
  {
    name: "index not JSON",
    fixture: "tiny-mixtral",
    corrupt: (d) => Deno.writeTextFile(`${d}/${INDEX}`, "{ weight_map: "),
    error: CheckpointError,
    file: INDEX,
    parts: ["Index is not valid JSON"],
  },
  {
    name: "index without weight_map",
    fixture: "tiny-mixtral",
    corrupt: (d) => Deno.writeTextFile(`${d}/${INDEX}`, `{"metadata": {}}`),
    error: CheckpointError,
    file: INDEX,
    parts: ['"weight_map" must be an object'],
  },
  {
    name: "index with an empty weight_map",
    fixture: "tiny-mixtral",
    corrupt: (d) => Deno.writeTextFile(`${d}/${INDEX}`, `{"weight_map": {}}`),
    error: CheckpointError,
    file: INDEX,
    parts: ['"weight_map" is empty'],
  },
  {
    name: "index entry not a string",
    fixture: "tiny-mixtral",
    corrupt: (d) =>
      editJson(
        `${d}/${INDEX}`,
        (j) => void ((j.weight_map as Record<string, unknown>)["lm_head.weight"] = 1),
      ),
    error: CheckpointError,
    file: INDEX,
    parts: ['weight_map entry "lm_head.weight" must be a file name'],
  },
  {
    name: "index points outside the folder (../)",
    fixture: "tiny-mixtral",
    corrupt: (d) =>
      editJson(`${d}/${INDEX}`, (j) => {
        (j.weight_map as Record<string, unknown>)["lm_head.weight"] = `../${S1}`;
      }),
    error: CheckpointError,
    file: INDEX,
    parts: ["Shard outside the checkpoint folder", `"../${S1}"`, '"lm_head.weight"'],
  },
  {
    name: "index points outside the folder (absolute)",
    fixture: "tiny-mixtral",
    corrupt: (d) =>
      editJson(`${d}/${INDEX}`, (j) => {
        (j.weight_map as Record<string, unknown>)["lm_head.weight"] = "/etc/passwd";
      }),
    error: CheckpointError,
    file: INDEX,
    parts: ["Shard outside the checkpoint folder", '"/etc/passwd"'],
  },
  {
    name: "index points to a missing shard",
    fixture: "tiny-mixtral",
    corrupt: (d) => Deno.remove(`${d}/${S2}`),
    error: CheckpointError,
    file: INDEX,
    parts: ["Missing shard", `"${S2}"`],
  },
  {
    name: "index maps a tensor twice (duplicate key, other shard)",
    fixture: "tiny-mixtral",
    corrupt: async (d) => {
      const text = await Deno.readTextFile(`${d}/${INDEX}`);
      // JSON.parse keeps the last duplicate: the tensor then lives in a shard the index does not name
      await Deno.writeTextFile(
        `${d}/${INDEX}`,
        text.replace(
          `"lm_head.weight": "${S1}",`,
          `"lm_head.weight": "${S1}",\n    "lm_head.weight": "${S2}",`,
        ),
      );
    },
    error: CheckpointError,
    file: INDEX,
    parts: ["Tensor in wrong shard", '"lm_head.weight"'],
  },
  {
    name: "a tensor stored in two shards",
    fixture: "tiny-mixtral",
    corrupt: (d) => {
      // shard 2 gains a copy of shard 1's first norm
      const name = "model.layers.0.input_layernorm.weight";
      const one = readSafetensors(`${d}/${S1}`);
      const norm = one.header[name] as { data_offsets: number[] };
      const bytes = one.data.slice(norm.data_offsets[0], norm.data_offsets[1]);
      const two = readSafetensors(`${d}/${S2}`);
      two.header[name] = {
        dtype: "BF16",
        shape: [64],
        data_offsets: [two.data.length, two.data.length + bytes.length],
      };
      write(`${d}/${S2}`, encodeSafetensors(two.header, new Uint8Array([...two.data, ...bytes])));
    },
    error: CheckpointError,
    file: INDEX,
    parts: ["Duplicate tensor", '"model.layers.0.input_layernorm.weight"', S1, S2],
  },
  {
    name: "index lists a tensor no shard holds",
    fixture: "tiny-mixtral",
    corrupt: (d) =>
      editJson(`${d}/${INDEX}`, (j) => {
        (j.weight_map as Record<string, unknown>)["model.ghost.weight"] = S1;
      }),
    error: CheckpointError,
    file: INDEX,
    parts: ["Tensor missing from shard", '"model.ghost.weight"'],
  },
  {
    name: "a shard holds a tensor the index does not list",
    fixture: "tiny-mixtral",
    corrupt: (d) =>
      editJson(`${d}/${INDEX}`, (j) => {
        delete (j.weight_map as Record<string, unknown>)["model.norm.weight"];
      }),
    error: CheckpointError,
    file: INDEX,
    parts: ["Tensor not in index", '"model.norm.weight"'],
  },
  // ---- tensors against config.json -------------------------------------------------------------------
  {
    name: "config.json with fewer layers than the weights",
    fixture: "tiny-mixtral",
    corrupt: (d) => config(d, (c) => (c.num_hidden_layers = 1)),
    error: CheckpointError,
    file: S2,
    parts: [
      "Checkpoint has more layers than config.json describes: it holds model.layers.1, config.json describes 1 layer (model.layers.0); 31 tensors would be left out",
      "correct config.json's layer count",
    ],
  },
  {
    name: "switch config.json with fewer decoder layers than the weights",
    fixture: "tiny-switch",
    corrupt: (d) =>
      config(d, (c) => {
        c.num_decoder_layers = 1;
        c.num_sparse_decoder_layers = 0;
      }),
    error: CheckpointError,
    file: SINGLE,
    parts: ["it holds decoder.block.1, config.json describes 1 layer (decoder.block.0)"],
  },
  {
    name: "tensor missing for the architecture",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        const name = "model.layers.1.mlp.experts.3.up_proj.weight";
        h[`${name}.renamed`] = h[name];
        delete h[name];
      }),
    error: CheckpointError,
    file: "",
    parts: ["Missing tensor for olmoe", '"model.layers.1.mlp.experts.3.up_proj.weight"', "[32,64]"],
  },
  {
    name: "qwen3 q_norm missing",
    fixture: "tiny-qwen3-moe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        h["q_norm.unused"] = h["model.layers.0.self_attn.q_norm.weight"];
        delete h["model.layers.0.self_attn.q_norm.weight"];
      }),
    error: CheckpointError,
    file: "",
    parts: ["Missing tensor for qwen3_moe", '"model.layers.0.self_attn.q_norm.weight"'],
  },
  {
    name: "qwen2 shared expert gate missing",
    fixture: "tiny-qwen2-moe",
    corrupt: (d) =>
      editHeader(`${d}/${SINGLE}`, (h) => {
        h["gate.unused"] = h["model.layers.1.mlp.shared_expert_gate.weight"];
        delete h["model.layers.1.mlp.shared_expert_gate.weight"];
      }),
    error: CheckpointError,
    file: "",
    parts: ["Missing tensor for qwen2_moe", '"model.layers.1.mlp.shared_expert_gate.weight"'],
  },
  {
    name: "tensor transposed (same bytes, other shape)",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, ROUTER0, (e) => (e.shape = [64, 16])),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor shape disagrees with config.json", `"${ROUTER0}" is [64,16], expected [16,64]`],
  },
  {
    name: "config num_experts disagrees with the router",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_experts = 8)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor shape disagrees with config.json", `"${ROUTER0}" is [16,64], expected [8,64]`],
  },
  {
    name: "config vocab_size disagrees with the embedding",
    fixture: "tiny-mixtral",
    corrupt: (d) => config(d, (c) => (c.vocab_size = 1000)),
    error: CheckpointError,
    file: S1,
    parts: ["Tensor shape disagrees with config.json", "[512,64], expected [1000,64]"],
  },
  {
    name: "config moe_intermediate_size disagrees with the experts",
    fixture: "tiny-qwen3-moe",
    corrupt: (d) => config(d, (c) => (c.moe_intermediate_size = 64)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor shape disagrees with config.json", "expected [64,64]"],
  },
  {
    name: "header not padded: bf16 data at odd offsets",
    fixture: "tiny-olmoe",
    corrupt: (d) => {
      const { header, data } = readSafetensors(`${d}/${SINGLE}`);
      let text = JSON.stringify(header);
      if (text.length % 2 === 0) text += " ";
      write(`${d}/${SINGLE}`, encodeSafetensors(text, data));
    },
    error: CheckpointError,
    file: SINGLE,
    parts: ["Unaligned tensor", "not a multiple of 2 as bf16 needs"],
  },
  {
    name: "a needed tensor in F16 (right size, unsupported dtype)",
    fixture: "tiny-olmoe",
    corrupt: (d) => editTensor(`${d}/${SINGLE}`, "model.norm.weight", (e) => (e.dtype = "F16")),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Unsupported dtype", '"model.norm.weight" is F16, supported is BF16'],
  },
  // ---- config.json -----------------------------------------------------------------------------------
  {
    name: "config.json missing",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.remove(`${d}/config.json`),
    error: ConfigError,
    file: "config.json",
    parts: ["Missing config.json"],
  },
  {
    name: "config.json a folder",
    fixture: "tiny-olmoe",
    corrupt: async (d) => {
      await Deno.remove(`${d}/config.json`);
      await Deno.mkdir(`${d}/config.json`);
    },
    error: ConfigError,
    file: "config.json",
    parts: ["Cannot read config.json"],
  },
  {
    name: "config.json not JSON",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.writeTextFile(`${d}/config.json`, `{"model_type": "olmoe",`),
    error: ConfigError,
    file: "config.json",
    parts: ["config.json is not valid JSON"],
  },
  {
    name: "config.json an array",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.writeTextFile(`${d}/config.json`, `[]`),
    error: ConfigError,
    file: "config.json",
    parts: ["config.json must hold a JSON object"],
  },
  {
    name: "switch_transformers with a gated feed-forward (T5 v1.1)",
    fixture: "tiny-switch",
    corrupt: (d) => config(d, (c) => (c.feed_forward_proj = "gated-gelu")),
    error: ConfigError,
    file: "config.json",
    parts: ["Unsupported feed-forward", '"gated-gelu"', 'supported is the ReLU MLP "relu"'],
  },
  {
    name: "switch_transformers expert of another width",
    fixture: "tiny-switch",
    corrupt: (d) => config(d, (c) => (c.d_ff = 96)),
    error: CheckpointError,
    file: SINGLE,
    parts: ["Tensor shape disagrees with config.json", "[128,64]", "expected [96,64]"],
  },
  {
    name: "model_type missing",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => void delete c.model_type),
    error: ConfigError,
    file: "config.json",
    parts: ["Unsupported model_type: undefined", "supported are mixtral"],
  },
  {
    name: "hidden_size 0",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.hidden_size = 0)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid hidden_size: expected an integer >= 1, got 0"],
  },
  {
    name: "num_attention_heads negative",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_attention_heads = -4)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_attention_heads", "got -4"],
  },
  {
    name: "num_hidden_layers not an integer",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_hidden_layers = 1.5)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_hidden_layers", "got 1.5"],
  },
  {
    name: "vocab_size a string",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.vocab_size = "512")),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid vocab_size", 'got "512"'],
  },
  {
    name: "num_experts_per_tok above the experts",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_experts_per_tok = 17)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_experts_per_tok: 17 exceeds the 16 experts"],
  },
  {
    name: "num_key_value_heads not dividing the heads",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_key_value_heads = 3)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_key_value_heads: 3 must divide num_attention_heads 4"],
  },
  {
    name: "head_dim odd",
    fixture: "tiny-qwen3-moe",
    corrupt: (d) => config(d, (c) => (c.head_dim = 33)),
    error: ConfigError,
    file: "config.json",
    parts: ["Unsupported head_dim: 33, the attention kernels take a multiple of 4 up to 256"],
  },
  {
    name: "head_dim over the attention kernels' 256",
    fixture: "tiny-qwen3-moe",
    corrupt: (d) => config(d, (c) => (c.head_dim = 260)),
    error: ConfigError,
    file: "config.json",
    parts: ["Unsupported head_dim: 260"],
  },
  {
    name: "rms_norm_eps negative",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.rms_norm_eps = -1e-5)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid rms_norm_eps"],
  },
  {
    name: "rope_theta zero",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      config(d, (c) => {
        c.rope_theta = 0;
        c.rope_parameters = { rope_type: "default", rope_theta: 0 };
      }),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid rope_theta"],
  },
  {
    name: "rope_type yarn",
    fixture: "tiny-olmoe",
    corrupt: (d) =>
      config(d, (c) => (c.rope_parameters = { rope_type: "yarn", rope_theta: 10000, factor: 4 })),
    error: ConfigError,
    file: "config.json",
    parts: ['Unsupported rope_type: "yarn"'],
  },
  {
    name: "hidden_act gelu",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.hidden_act = "gelu")),
    error: ConfigError,
    file: "config.json",
    parts: ['Unsupported hidden_act: "gelu"'],
  },
  {
    name: "mlp_only_layers out of range",
    fixture: "tiny-qwen2-moe",
    corrupt: (d) => config(d, (c) => (c.mlp_only_layers = [5])),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid mlp_only_layers"],
  },
  {
    name: "every layer dense",
    fixture: "tiny-qwen2-moe",
    corrupt: (d) => config(d, (c) => (c.mlp_only_layers = [0, 1])),
    error: ConfigError,
    file: "config.json",
    parts: ["The model has no MoE layer"],
  },
  {
    name: "eos_token_id negative",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.eos_token_id = [2, -1])),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid eos_token_id: [2,-1]"],
  },
  {
    name: "num_hidden_layers 3,000,000 (the name tables alone would exhaust the heap)",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_hidden_layers = 3_000_000)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_hidden_layers: 3000000, at most"],
  },
  {
    name: "num_experts 10^9",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.num_experts = 1e9)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid num_experts: 1000000000 experts × 2 layers"],
  },
  {
    name: "max_position_embeddings 0",
    fixture: "tiny-olmoe",
    corrupt: (d) => config(d, (c) => (c.max_position_embeddings = 0)),
    error: ConfigError,
    file: "config.json",
    parts: ["Invalid max_position_embeddings"],
  },
  // ---- tokenizer -------------------------------------------------------------------------------------
  {
    name: "tokenizer.json missing",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.remove(`${d}/tokenizer.json`),
    error: TokenizerError,
    file: "tokenizer.json",
    parts: ["Missing tokenizer file"],
  },
  {
    name: "tokenizer.json not JSON",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.writeTextFile(`${d}/tokenizer.json`, "{"),
    error: TokenizerError,
    file: "tokenizer.json",
    parts: ["Malformed tokenizer file"],
  },
  {
    name: "tokenizer.json without a model",
    fixture: "tiny-olmoe",
    corrupt: (d) => editJson(`${d}/tokenizer.json`, (j) => void delete j.model),
    error: TokenizerError,
    file: "tokenizer.json",
    parts: ['no "model" field'],
  },
  {
    name: "tokenizer_config.json missing",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.remove(`${d}/tokenizer_config.json`),
    error: TokenizerError,
    file: "tokenizer_config.json",
    parts: ["Missing tokenizer file"],
  },
  // ---- text files: regular files of bounded size only -------------------------------------------------
  {
    name: "config.json a link to /dev/zero (read would never end)",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceByLink(`${d}/config.json`, "/dev/zero"),
    error: ConfigError,
    file: "config.json",
    parts: ["Cannot read config.json: it is a character device, not a regular file"],
  },
  {
    name: "config.json of 16 MiB + 1 byte",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.truncate(`${d}/config.json`, 16 * 2 ** 20 + 1),
    error: ConfigError,
    file: "config.json",
    parts: ["Cannot read config.json: it has 16777217 bytes, more than the limit of 16777216"],
  },
  {
    name: "config.json a directory",
    fixture: "tiny-olmoe",
    corrupt: async (d) => {
      await Deno.remove(`${d}/config.json`);
      await Deno.mkdir(`${d}/config.json`);
    },
    error: ConfigError,
    file: "config.json",
    parts: ["Cannot read config.json: it is a directory, not a regular file"],
  },
  {
    name: "shard index a link to /dev/zero",
    fixture: "tiny-mixtral",
    corrupt: (d) => replaceByLink(`${d}/${INDEX}`, "/dev/zero"),
    error: CheckpointError,
    file: INDEX,
    parts: ["Cannot read index: it is a character device, not a regular file"],
  },
  {
    name: "shard index of 64 MiB + 1 byte",
    fixture: "tiny-mixtral",
    corrupt: (d) => Deno.truncate(`${d}/${INDEX}`, 64 * 2 ** 20 + 1),
    error: CheckpointError,
    file: INDEX,
    parts: ["Cannot read index: it has 67108865 bytes, more than the limit of 67108864"],
  },
  {
    name: "tokenizer.json a link to /dev/zero",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceByLink(`${d}/tokenizer.json`, "/dev/zero"),
    error: TokenizerError,
    file: "tokenizer.json",
    parts: ["Cannot read tokenizer file", "it is a character device, not a regular file"],
  },
  {
    name: "tokenizer_config.json a link to /dev/zero",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceByLink(`${d}/tokenizer_config.json`, "/dev/zero"),
    error: TokenizerError,
    file: "tokenizer_config.json",
    parts: ["Cannot read tokenizer file", "it is a character device, not a regular file"],
  },
  {
    name: "chat_template.jinja a link to /dev/zero",
    fixture: "tiny-olmoe",
    corrupt: (d) => replaceByLink(`${d}/chat_template.jinja`, "/dev/zero"),
    error: TokenizerError,
    file: "chat_template.jinja",
    parts: ["Cannot read tokenizer file", "it is a character device, not a regular file"],
  },
  {
    name: "chat_template.jinja of 4 MiB + 1 byte",
    fixture: "tiny-olmoe",
    corrupt: (d) => Deno.truncate(`${d}/chat_template.jinja`, 4 * 2 ** 20 + 1),
    error: TokenizerError,
    file: "chat_template.jinja",
    parts: ["it has 4194305 bytes, more than the limit of 4194304"],
  },
  // ---- a budget no GPU can meet is refused before the GPU too ---------------------------------------
  {
    name: "budget below the minimum",
    fixture: "tiny-olmoe",
    corrupt: () => {},
    options: { policy: "swapmoe", budget: 1000 },
    error: BudgetError,
    file: null,
    parts: ["Budget too small: 1000 bytes", 'policy "swapmoe" needs at least'],
  },
  {
    name: "full policy with a budget under the footprint",
    fixture: "tiny-olmoe",
    corrupt: () => {},
    options: { policy: "full", budget: "99%" },
    error: BudgetError,
    file: null,
    parts: ["Budget too small", 'policy "full" needs at least'],
  },
];

const log: string[] = [];

for (const c of CASES) {
  Deno.test(`hostile: ${c.name} → ${c.error.name}`, async () => {
    const dir = c.fixture === "tiny-switch" ? await copyFixture("tiny-switch") : await copyFixture(c.fixture);
    try {
      await c.corrupt(dir);
      using adapters = spyOnAdapters();
      const err: SwapMoeError = await assertRejects(
        () => createEngine({ model: dir, ...c.options }),
        c.error,
        ...c.parts,
      );
      assert.equal(err.constructor, c.error, `exactly ${c.error.name}, got ${err.name}`);
      if (c.file !== null) {
        const path = c.file === "" ? dir : `${dir}/${c.file}`;
        assert.ok(err.message.includes(path), `"${err.message}" does not name ${path}`);
        if (err instanceof CheckpointError) assert.equal(err.file, path);
      }
      assert.equal(adapters.calls, 0, "a WebGPU adapter was requested before the refusal");
      assert.deepEqual(mappedUnder(dir), [], "a file stayed mapped after the refusal");
      log.push(`${c.name}\t${err.name}: ${err.message.replaceAll(dir, "<dir>")}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("hostile: a model folder that does not exist (and is no hub name) → CheckpointError; a file → ConfigError", async () => {
  using adapters = spyOnAdapters();
  const missing = `${FIXTURES}no-such-model`;
  await assertRejects(
    () => createEngine({ model: missing }),
    CheckpointError,
    `Model folder not found: ${missing}; a model on the Hugging Face hub is named org/name[@revision]`,
  );
  const file = `${FIXTURES}tiny-olmoe/config.json`;
  await assertRejects(() => createEngine({ model: file }), ConfigError, "Cannot read config.json", file);
  assert.equal(adapters.calls, 0);
});

Deno.test("hostile: config.json, the index or tokenizer.json as a FIFO is refused at once, not waited on", async () => {
  for (
    const [fixture, file, error, part] of [
      ["tiny-olmoe", "config.json", ConfigError, "Cannot read config.json: it is a FIFO, not a regular file"],
      ["tiny-mixtral", INDEX, CheckpointError, "Cannot read index: it is a FIFO, not a regular file"],
      ["tiny-olmoe", "tokenizer.json", TokenizerError, "it is a FIFO, not a regular file"],
    ] as const
  ) {
    const dir = await copyFixture(fixture);
    const path = `${dir}/${file}`;
    await Deno.remove(path);
    const made = await new Deno.Command("mkfifo", { args: [path] }).output();
    assert.ok(made.success, "mkfifo failed");
    // A writer that opens the FIFO whenever a reader does and closes it a second later: a reader that
    // opens and waits gets an empty file (a wrong message) rather than hanging the test. `timeout` ends
    // the writer's whole process group, also a shell blocked in opening the FIFO for nobody.
    const writer = new Deno.Command("timeout", {
      args: ["30", "sh", "-c", 'while :; do sleep 1 > "$1"; done', "sh", path],
    }).spawn();
    try {
      const t0 = performance.now();
      using adapters = spyOnAdapters();
      await assertRejects(() => createEngine({ model: dir }), error, part, path);
      assert.ok(performance.now() - t0 < 2000, `took ${performance.now() - t0} ms`);
      assert.equal(adapters.calls, 0);
    } finally {
      writer.kill();
      await writer.status;
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("hostile: write the log", { sanitizeResources: false, sanitizeOps: false }, () => {
  const path = Deno.env.get("SWAPMOE_HOSTILE_LOG");
  if (path) Deno.writeTextFileSync(path, log.join("\n") + "\n");
});

/** Runs the truncation child on a fresh copy of tiny-olmoe. */
async function truncateInChild(mode: "raw" | "engine"): Promise<Deno.CommandOutput & { text: string }> {
  const dir = await copyFixture("tiny-olmoe");
  try {
    const child = new URL("./support/truncate_child.ts", import.meta.url);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", child.pathname, mode, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return Object.assign(out, { text: new TextDecoder().decode(out.stdout) });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("hostile: a shard truncated under a running engine → CheckpointError, not SIGBUS", async () => {
  const out = await truncateInChild("engine");
  assert.equal(out.signal, null, `the child died of ${out.signal}`);
  assert.match(out.text, /RESULT CheckpointError: File changed on disk while mapped: 4096 bytes now/);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
});

Deno.test("hostile: the residual hazard — a view read after its file was truncated raises SIGBUS", async () => {
  // What remains (ffi/mmap.ts): a truncation between the check and the read still kills the process.
  const out = await truncateInChild("raw");
  assert.equal(out.signal, "SIGBUS", `expected SIGBUS, got code ${out.code}: ${out.text}`);
  assert.doesNotMatch(out.text, /RESULT/);
});
