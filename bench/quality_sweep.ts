/**
 * The measurements behind docs/quality.md, split so that they can run on a GPU machine that has no
 * package registry (and no room for the corpora's npm packages):
 *
 *   here:  deno run -A bench/quality_sweep.ts prepare --out scratch/quality-ids.json
 *   there: deno run -A bench/quality_sweep.ts run --ids scratch/quality-ids.json --corpus sotu-test \
 *            --max-windows 40 --decode-tokens 32 --out $OUT --tag sweep_test40
 *          deno run -A bench/quality_sweep.ts run --ids scratch/quality-ids.json --corpus moby \
 *            --max-windows 200 --per-layer 4,8 --policies swapmoe,swapmoe-profile,static,static-random,static-oracle \
 *            --experts bf16,int4,bf16+int4 --calibration calibration-recent --out $OUT --tag head_moby
 *
 * `prepare` tokenises the held-out addresses (sotu-test), Moby-Dick's first 201 windows and two sets of
 * calibration windows as `main.ts eval` does: `calibration`, 64 evenly spaced over the addresses
 * before 2012 (sotu-train), and `calibration-recent`, 50 over those from 1990 (sotu-recent);
 * `run` is `main.ts eval --sweep` on those ids: it writes `<tag>.json` (the sweep), `<tag>.md` (the
 * table) and `<tag>.svg` (the plot) under --out, and prints the table.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { expertCopyBytes } from "../src/models/family.ts";
import { loadModelConfig } from "../src/models/registry.ts";
import { Tokenizer } from "../src/text/tokenizer.ts";
import { loadCorpus, tokenizeCorpus } from "../src/eval/corpus.ts";
import { markdownTable, svgPlot } from "../src/eval/report.ts";
import { spacedWindows, sweep, type SweepPolicy } from "../src/eval/sweep.ts";

const { positionals, values } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    out: { type: "string" },
    ids: { type: "string" },
    model: { type: "string" },
    corpus: { type: "string", default: "sotu-test" },
    window: { type: "string", default: "256" },
    "max-windows": { type: "string" },
    "calibration-windows": { type: "string", default: "64" },
    "per-layer": { type: "string" },
    experts: { type: "string" },
    calibration: { type: "string", default: "calibration" },
    "recent-windows": { type: "string", default: "50" },
    policies: { type: "string" },
    "decode-tokens": { type: "string", default: "0" },
    "importance-decay": { type: "string" },
    "update-interval": { type: "string" },
    "max-upload-experts": { type: "string" },
    planner: { type: "string" },
    tag: { type: "string", default: "sweep" },
  },
});
const model = values.model ?? fileURLToPath(new URL("../models/sotu-moe-mini", import.meta.url));
const window = Number(values.window);
const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));

if (positionals[0] === "prepare") {
  const tokenizer = await Tokenizer.load(model);
  const out: Record<string, number[]> = {};
  out["sotu-test"] = tokenizeCorpus(tokenizer, await loadCorpus("sotu-test", model));
  out["moby"] = tokenizeCorpus(tokenizer, await loadCorpus("moby", model), 201 * window);
  out["calibration"] = spacedWindows(
    tokenizeCorpus(tokenizer, await loadCorpus("sotu-train", model)),
    window,
    Number(values["calibration-windows"]),
  );
  out["calibration-recent"] = spacedWindows(
    tokenizeCorpus(tokenizer, await loadCorpus("sotu-recent", model)),
    window,
    Number(values["recent-windows"]),
  );
  await Deno.writeTextFile(values.out ?? "quality-ids.json", JSON.stringify(out));
  console.log(Object.entries(out).map(([k, v]) => `${k}: ${v.length} tokens`).join(", "));
} else if (positionals[0] === "run") {
  if (!values.ids) throw new Error("run needs --ids (from prepare)");
  const ids = JSON.parse(await Deno.readTextFile(values.ids)) as Record<string, number[]>;
  const evalIds = ids[values.corpus];
  if (!evalIds) throw new Error(`${values.ids} has no corpus ${values.corpus}`);
  const calibrationIds = ids[values.calibration];
  if (!calibrationIds) throw new Error(`${values.ids} has no calibration ${values.calibration}`);
  const uploadExperts = num(values["max-upload-experts"]);
  const { architecture } = await loadModelConfig(model);
  const slotBytes = expertCopyBytes(architecture.expertMatrices, architecture.nativePrecision);
  const t0 = performance.now();
  const result = await sweep({
    model: values.model,
    ids: evalIds,
    calibrationIds,
    window,
    maxWindows: num(values["max-windows"]),
    calibrationWindows: calibrationIds.length / window,
    experts: values["per-layer"]?.split(",").map(Number),
    precisions: values.experts?.split(","),
    policies: values.policies?.split(",") as Exclude<SweepPolicy, "full">[] | undefined,
    decodeTokens: Number(values["decode-tokens"]),
    swapmoe: {
      importanceDecay: num(values["importance-decay"]),
      updateInterval: num(values["update-interval"]),
      maxUploadBytesPerStep: uploadExperts === undefined ? undefined : uploadExperts * slotBytes,
      planner: values.planner as "uniform" | "profile" | undefined,
    },
    log: (m) => console.error(m),
  });
  const dir = values.out ?? ".";
  const title = `${values.corpus}: ${result.windows} windows of ${window}, calibration ${values.calibration}`;
  await Deno.writeTextFile(`${dir}/${values.tag}.json`, JSON.stringify(result));
  await Deno.writeTextFile(`${dir}/${values.tag}.md`, markdownTable(result.rows) + "\n");
  await Deno.writeTextFile(`${dir}/${values.tag}.svg`, svgPlot(result, title));
  console.log(
    `${title} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n\n${markdownTable(result.rows)}`,
  );
} else {
  console.error("usage: deno run -A bench/quality_sweep.ts prepare|run [options] (see the file's header)");
  Deno.exit(2);
}
