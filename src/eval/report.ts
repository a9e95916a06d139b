/**
 * A sweep as people read it: a Markdown table and an SVG plot of perplexity against GPU bytes, one
 * line per policy and expert precision.
 *
 * @module
 */
import { formatBytes } from "../moe/budget.ts";
import type { SweepResult, SweepRow } from "./sweep.ts";

const fixed = (x: number, d: number): string => x.toFixed(d);
const ppl = (x: number): string => (x >= 1000 ? x.toFixed(0) : x.toFixed(2));

/** The rows of a sweep as a Markdown table, ordered by budget then policy order. */
export function markdownTable(rows: readonly SweepRow[]): string {
  const head = [
    "budget (bf16 experts)",
    "GPU bytes",
    "policy",
    "experts",
    "perplexity",
    "× full",
    "hit rate",
    "high hits",
    "swaps",
    "bytes swapped",
    "decode tok/s",
    "eval s",
  ];
  const sorted = [...rows].sort((a, b) => a.experts - b.experts);
  const lines = sorted.map((r) => [
    `${r.experts} of ${r.ofExperts}`,
    `${r.gpuBytes} (${formatBytes(r.gpuBytes)})`,
    `\`${r.policy}\``,
    r.precision ?? "bf16",
    ppl(r.perplexity),
    fixed(r.ratio, 3),
    `${fixed(100 * r.hitRate, 1)}%`,
    r.highPrecisionHitRate === undefined ? "–" : `${fixed(100 * r.highPrecisionHitRate, 1)}%`,
    String(r.swaps),
    formatBytes(r.bytesSwapped),
    r.decodeTokensPerSecond !== undefined ? fixed(r.decodeTokensPerSecond, 1) : "–",
    fixed(r.seconds, 1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  return [fmt(head), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...lines.map(fmt)].join("\n");
}

const COLORS: Record<string, string> = {
  full: "#000000",
  swapmoe: "#d62728",
  "swapmoe-profile": "#ff7f0e",
  static: "#1f77b4",
  "static-planned": "#17becf",
  "static-random": "#7f7f7f",
  "static-oracle": "#2ca02c",
  lru: "#9467bd",
};

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * An SVG plot of perplexity (log scale) against GPU bytes, one line per policy; the full model's
 * point ends every line. `title` heads the plot.
 */
export function svgPlot(result: Pick<SweepResult, "rows">, title: string): string {
  const W = 720, H = 440;
  const m = { left: 70, right: 170, top: 40, bottom: 60 };
  const rows = result.rows;
  // the checkpoint's own precision (bf16, gpt-oss's mxfp4): that of the sweep's first full row
  const native = rows.find((r) => r.policy === "full")?.precision ?? "bf16";
  const full = rows.find((r) => r.policy === "full" && (r.precision ?? "bf16") === native);
  // a line per policy and precision ("swapmoe" at bf16, "swapmoe bf16+int4", "full int4", …)
  const lineOf = (r: SweepRow) =>
    (r.precision ?? "bf16") === native ? r.policy : `${r.policy} ${r.precision}`;
  const policies = [...new Set(rows.map(lineOf))].filter((p) => p !== "full");
  const xs = rows.map((r) => r.gpuBytes / 2 ** 20);
  const ys = rows.map((r) => Math.log10(r.perplexity));
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y0 = Math.floor(Math.min(...ys) * 10) / 10;
  let y1 = Math.ceil(Math.max(...ys) * 10) / 10;
  if (y1 - y0 < 0.2) y1 = y0 + 0.2;
  const padX = (x1 - x0) * 0.04 || 1;
  const sx = (v: number) => m.left + ((v - (x0 - padX)) / (x1 - x0 + 2 * padX)) * (W - m.left - m.right);
  const sy = (v: number) => H - m.bottom - ((v - y0) / (y1 - y0)) * (H - m.top - m.bottom);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2 - m.right / 2 + m.left / 2}" y="22" text-anchor="middle" font-size="14">${
      esc(title)
    }</text>`,
  );
  // axes and ticks
  out.push(
    `<line x1="${m.left}" y1="${H - m.bottom}" x2="${W - m.right}" y2="${H - m.bottom}" stroke="#333"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${H - m.bottom}" stroke="#333"/>`,
  );
  const ticks = niceTicks(y0, y1);
  for (const t of ticks) {
    const y = sy(Math.log10(t));
    out.push(
      `<line x1="${m.left}" y1="${fixed(y, 1)}" x2="${W - m.right}" y2="${fixed(y, 1)}" stroke="#eee"/>`,
      `<text x="${m.left - 6}" y="${fixed(y + 4, 1)}" text-anchor="end">${t}</text>`,
    );
  }
  const budgets = [...new Map(rows.map((r) => [r.experts, r])).values()].sort((a, b) =>
    a.experts - b.experts
  );
  for (const r of budgets) {
    const x = sx(r.gpuBytes / 2 ** 20);
    out.push(
      `<line x1="${fixed(x, 1)}" y1="${H - m.bottom}" x2="${fixed(x, 1)}" y2="${
        H - m.bottom + 4
      }" stroke="#333"/>`,
      `<text x="${fixed(x, 1)}" y="${H - m.bottom + 17}" text-anchor="middle">${
        fixed(r.gpuBytes / 2 ** 20, 1)
      }</text>`,
      `<text x="${fixed(x, 1)}" y="${
        H - m.bottom + 30
      }" text-anchor="middle" fill="#666">${r.experts}/${r.ofExperts}</text>`,
    );
  }
  out.push(
    `<text x="${(m.left + W - m.right) / 2}" y="${
      H - 12
    }" text-anchor="middle">GPU MiB held (experts held per layer)</text>`,
    `<text transform="translate(16 ${
      (m.top + H - m.bottom) / 2
    }) rotate(-90)" text-anchor="middle">perplexity (log scale)</text>`,
  );
  // one line per policy, ending at the full model
  policies.forEach((p, i) => {
    const pts = rows.filter((r) => lineOf(r) === p).concat(full && !p.startsWith("full") ? [full] : [])
      .sort((a, b) => a.gpuBytes - b.gpuBytes)
      .map((r) => [sx(r.gpuBytes / 2 ** 20), sy(Math.log10(r.perplexity))] as const);
    const [policy, precision] = p.split(" ") as [string, string | undefined];
    const color = COLORS[policy] ?? "#8c564b";
    // precisions: bf16 solid, a pair dotted, one lower precision dash-dot; static dashed
    const dash = precision?.includes("+")
      ? ` stroke-dasharray="2 2"`
      : precision
      ? ` stroke-dasharray="8 3 2 3"`
      : policy.startsWith("static")
      ? ` stroke-dasharray="5 3"`
      : "";
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${
        pts.map(([x, y]) => `${fixed(x, 1)},${fixed(y, 1)}`).join(" ")
      }"/>`,
      ...pts.map(([x, y]) => `<circle cx="${fixed(x, 1)}" cy="${fixed(y, 1)}" r="3" fill="${color}"/>`),
    );
    const ly = m.top + 10 + i * 18;
    out.push(
      `<line x1="${W - m.right + 12}" y1="${ly}" x2="${
        W - m.right + 36
      }" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${W - m.right + 42}" y="${ly + 4}">${esc(p)}</text>`,
    );
  });
  if (full) {
    const ly = m.top + 10 + policies.length * 18;
    out.push(
      `<circle cx="${W - m.right + 24}" cy="${ly}" r="3" fill="#000"/>`,
      `<text x="${W - m.right + 42}" y="${ly + 4}">full ${ppl(full.perplexity)}</text>`,
    );
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Round tick values (1, 2, 5 × 10^k) between 10^lo and 10^hi. */
function niceTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let k = Math.floor(lo) - 1; k <= Math.ceil(hi); k++) {
    for (const f of [1, 2, 5]) {
      const v = f * 10 ** k;
      const l = Math.log10(v);
      if (l >= lo - 1e-9 && l <= hi + 1e-9) out.push(v);
    }
  }
  if (out.length < 3) {
    // a narrow range: evenly spaced values instead
    const n = 5;
    return Array.from(
      { length: n },
      (_, i) => Number((10 ** (lo + ((hi - lo) * i) / (n - 1))).toPrecision(3)),
    );
  }
  return out;
}
