/** The tensor checks every family shares, on header tables made up here (no file, no GPU). */
import assert from "node:assert/strict";
import type { TensorInfo } from "../checkpoint/safetensors.ts";
import { CheckpointError } from "../errors.ts";
import { checkTensorShapes } from "./family.ts";

/** A bf16 tensor of shape [2] named `name` in `file`. */
const tensor = (name: string, file = "/m/model.safetensors"): TensorInfo => ({
  name,
  dtype: "BF16",
  shape: [2],
  file,
  byteOffset: 0,
  byteLength: 4,
});

/** A table of the tensors named. */
const table = (names: string[]) => new Map(names.map((n) => [n, tensor(n)]));

/** The message of the CheckpointError `fn` throws. */
function refusal(fn: () => void): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CheckpointError, String(e));
    return e.message;
  }
  assert.fail("nothing thrown");
}

Deno.test("checkTensorShapes: layers past those config.json describes are named, as a run or a list", () => {
  const expected = new Map([["embed.weight", [2]], ["model.layers.0.w", [2]], ["model.layers.1.w", [2]]]);
  const described = ["embed.weight", "model.layers.0.w", "model.layers.1.w"];
  checkTensorShapes("mixtral", expected, table(described), "/m"); // exactly what config.json describes
  checkTensorShapes("mixtral", expected, table([...described, "other.3.w"]), "/m"); // not a stack it has
  const run = table([
    ...described,
    ...[2, 3, 4, 5].flatMap((i) => [`model.layers.${i}.w`, `model.layers.${i}.v`]),
  ]);
  assert.equal(
    refusal(() => checkTensorShapes("mixtral", expected, run, "/m")),
    'Checkpoint has more layers than config.json describes: it holds model.layers.2 to model.layers.5, config.json describes 2 layers (model.layers.0 to model.layers.1); 8 tensors would be left out, e.g. "model.layers.2.w"; correct config.json\'s layer count, or use the weights it was written with (in /m/model.safetensors)',
  );
  const gaps = table([...described, ...[2, 4, 7, 8, 9, 12, 40].map((i) => `model.layers.${i}.w`)]);
  assert.match(
    refusal(() => checkTensorShapes("mixtral", expected, gaps, "/m")),
    /it holds model\.layers\.2, model\.layers\.4, model\.layers\.7, model\.layers\.8, model\.layers\.9, … model\.layers\.40, config\.json describes 2 layers \(model\.layers\.0 to model\.layers\.1\); 7 tensors/,
  );
});
