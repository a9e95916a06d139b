import assert from "node:assert/strict";
import { markdownTable, svgPlot } from "./report.ts";
import type { SweepRow } from "./sweep.ts";

function row(policy: SweepRow["policy"], experts: number, perplexity: number, precision = "bf16"): SweepRow {
  const gpuBytes = 1_000_000 + experts * 100_000;
  return {
    policy,
    precision,
    experts,
    ofExperts: 16,
    budgetBytes: gpuBytes,
    gpuBytes,
    perplexity,
    ratio: perplexity / 80,
    windows: 2,
    tokens: 510,
    hitRate: experts / 16,
    highPrecisionHitRate: experts / 32,
    swaps: 3,
    bytesUploaded: 9,
    bytesSwapped: 3,
    expertSlots: [experts, experts],
    seconds: 1.5,
  };
}

const rows = [
  row("full", 16, 80),
  row("swapmoe", 4, 200),
  row("static", 4, 300),
  row("swapmoe", 8, 100),
  row("swapmoe", 4, 120, "bf16+int4"),
  row("swapmoe", 8, 90, "bf16+int4"),
  row("full", 16, 81, "int4"),
];

Deno.test("markdownTable: a header, a rule, one aligned line per row, by budget", () => {
  const lines = markdownTable(rows).split("\n");
  assert.equal(lines.length, 2 + rows.length);
  assert.match(lines[0]!, /^\| budget \(bf16 experts\) \| GPU bytes .*\| experts .*\| perplexity \|/);
  assert.match(lines[1]!, /^\| -+ \|/);
  assert.match(lines[2]!, /\| 4 of 16 .*`swapmoe` \| bf16 .*\| 200\.00 .*\| 2\.500 /);
  assert.ok(lines.some((l) => /4 of 16 .*`swapmoe` \| bf16\+int4 .*\| 120\.00 /.test(l)));
  assert.match(lines.at(-1)!, /16 of 16 .*`full`/);
  assert.ok(lines.every((l) => l.length === lines[0]!.length), "columns aligned");
});

Deno.test("svgPlot: well-formed SVG with one line per policy and precision, and the full model in the legend", () => {
  const svg = svgPlot({ rows }, "a <title>");
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>\n$/);
  // swapmoe, static, swapmoe bf16+int4, full int4
  assert.equal((svg.match(/<polyline /g) ?? []).length, 4);
  assert.match(svg, />swapmoe bf16\+int4</);
  assert.match(svg, /a &lt;title&gt;/);
  assert.match(svg, />full 80\.00</);
  assert.doesNotMatch(svg, /NaN|undefined|Infinity/);
});
