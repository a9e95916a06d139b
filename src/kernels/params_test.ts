/**
 * Every uniform struct the CPU packs (src/gpu/dispatch.ts `paramsLayout`) against its WGSL
 * declaration: field names in order, f32 against u32, byte offsets under WGSL's alignment rules, and
 * the struct's size. A field added, removed or reordered on one side only fails here.
 */
import assert from "node:assert/strict";
import { type ParamsLayout, paramsLayout, paramsLayouts } from "../gpu/dispatch.ts";
import { shaderSource } from "../gpu/pipelines.ts";
// every kernel wrapper, so that each defines its layouts
import "./attention.ts";
import "./elementwise.ts";
import "./embed.ts";
import "./experts.ts";
import "./matmul.ts";
import "./norm.ts";
import "./router.ts";
import "./sample.ts";
import "./step.ts";
import "./t5.ts";

const SHADERS = new URL("../../shaders/", import.meta.url);

/** One scalar of a WGSL struct, vectors expanded (`eos: vec4<u32>` → eos0 … eos3). */
interface Scalar {
  name: string;
  type: string;
  offset: number;
}

const SCALAR = /^(u32|i32|f32)$/;
const VECTOR = /^vec([234])<(u32|i32|f32)>$/;

/** The scalars of `struct name` in `source` with their byte offsets, and the struct's size. */
export function wgslStruct(source: string, name: string): { scalars: Scalar[]; size: number } {
  const body = new RegExp(`struct\\s+${name}\\s*\\{([^}]*)\\}`).exec(source.replace(/\/\/[^\n]*/g, ""))?.[1];
  if (body === undefined) throw new Error(`No struct ${name}`);
  const scalars: Scalar[] = [];
  let offset = 0;
  let align = 4;
  for (const decl of body.split(",").map((d) => d.trim()).filter((d) => d !== "")) {
    const [field, type] = decl.split(":").map((x) => x.trim()) as [string, string];
    const v = VECTOR.exec(type);
    if (SCALAR.test(type)) {
      scalars.push({ name: field, type, offset });
      offset += 4;
    } else if (v) {
      const n = Number(v[1]);
      const a = n === 2 ? 8 : 16;
      align = Math.max(align, a);
      offset = Math.ceil(offset / a) * a;
      for (let i = 0; i < n; i++) scalars.push({ name: `${field}${i}`, type: v[2]!, offset: offset + 4 * i });
      offset += 4 * n;
    } else {throw new Error(
        `struct ${name}: field ${field} has type ${type}, which this check does not lay out`,
      );}
  }
  return { scalars, size: Math.ceil(offset / align) * align };
}

/** What disagrees between `layout` and the WGSL declaration in `source`; empty when they agree. */
export function layoutProblems(layout: ParamsLayout, source: string): string[] {
  const where = `${layout.file} ${layout.struct}`;
  const { scalars, size } = wgslStruct(source, layout.struct);
  const problems: string[] = [];
  layout.fields.forEach((field, i) => {
    const name = field.replace(/^f:/, "");
    const w = scalars[i];
    if (!w) return problems.push(`${where}: ${name} at word ${i} is past the struct's end`);
    if (w.name !== name) problems.push(`${where}: word ${i} is ${name} on the CPU, ${w.name} in WGSL`);
    if (w.offset !== 4 * i) {
      problems.push(`${where}: ${name} is at byte ${4 * i} on the CPU, ${w.offset} in WGSL`);
    }
    const f32 = field.startsWith("f:");
    if (f32 !== (w.type === "f32")) {
      problems.push(`${where}: ${name} is ${f32 ? "f32" : "u32"} on the CPU, ${w.type} in WGSL`);
    }
  });
  for (const w of scalars.slice(layout.fields.length)) {
    if (!w.name.startsWith("_")) problems.push(`${where}: WGSL field ${w.name} is not packed by the CPU`);
  }
  const packed = layout.bytes;
  if (packed !== size) {
    problems.push(`${where}: the CPU packs ${packed} bytes, the WGSL struct takes ${size}`);
  }
  return problems;
}

Deno.test("params: every packed uniform struct matches its WGSL declaration", async () => {
  const layouts = paramsLayouts();
  const files = new Set(layouts.map((l) => l.file));
  // every shader whose source (includes expanded) has a Params struct has a layout
  for (const e of Deno.readDirSync(SHADERS)) {
    if (!e.name.endsWith(".wgsl") || e.name === "common.wgsl") continue;
    if (/struct\s+Params\b/.test(await shaderSource(e.name))) {
      assert.ok(files.has(e.name), `${e.name} declares Params but no layout packs it`);
    }
  }
  const problems: string[] = [];
  for (const layout of layouts) {
    const source = layout.file === "common.wgsl"
      ? await Deno.readTextFile(new URL(layout.file, SHADERS))
      : await shaderSource(layout.file);
    problems.push(...layoutProblems(layout, source));
  }
  assert.deepEqual(problems, []);
  assert.ok(layouts.length >= 12, `${layouts.length} layouts`);
});

Deno.test("params: the check catches a renamed, reordered, retyped or missing field", () => {
  const wgsl = "struct Params { a: u32, b: f32, c: u32, _p0: u32, v: vec4<u32> }";
  const ok = paramsLayout("test.wgsl", ["a", "f:b", "c", "_p0", "v0", "v1", "v2", "v3"] as const);
  assert.deepEqual(layoutProblems(ok, wgsl), []);
  const cases: [readonly string[], RegExp][] = [
    [["a", "f:b", "d", "_p0", "v0", "v1", "v2", "v3"], /word 2 is d on the CPU, c in WGSL/],
    [["f:b", "a", "c", "_p0", "v0", "v1", "v2", "v3"], /word 0 is b on the CPU, a in WGSL/],
    [["a", "b", "c", "_p0", "v0", "v1", "v2", "v3"], /b is u32 on the CPU, f32 in WGSL/],
    [["a", "f:b"], /WGSL field c is not packed by the CPU/],
    [["a", "f:b", "c", "_p0", "v0", "v1", "v2", "v3", "x"], /x at word 8 is past the struct's end/],
  ];
  for (const [fields, expected] of cases) {
    const problems = layoutProblems(paramsLayout("test.wgsl", fields), wgsl);
    assert.ok(problems.some((p) => expected.test(p)), `${fields}: ${problems.join("; ")}`);
  }
  // a vec4 after an odd number of words is aligned to 16 bytes: the CPU's word 3 is not where it sits
  const gap = layoutProblems(
    paramsLayout("test.wgsl", ["a", "f:b", "c", "v0"]),
    "struct Params { a: u32, b: f32, c: u32, v: vec4<u32> }",
  );
  assert.ok(gap.some((p) => /v0 is at byte 12 on the CPU, 16 in WGSL/.test(p)), gap.join("; "));
});
