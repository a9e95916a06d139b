/**
 * The server's counters and `GET /metrics` in Prometheus' text exposition format (version 0.0.4):
 * requests by route and status, tokens, latency histograms, the queue, and the engine's own figures
 * (GPU bytes, budget, expert hit rate, swaps, bytes uploaded, upload pacing, tokens per second) read from
 * `engine.stats()` at scrape time.
 *
 * @module
 */
import type { EngineStats } from "../runtime/engine.ts";

/** The content type Prometheus expects. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A cumulative histogram with fixed upper bounds, as Prometheus' client libraries keep them. */
export class Histogram {
  readonly bounds: readonly number[];
  readonly counts: number[];
  sum = 0;
  count = 0;

  /** Creates a histogram with the given ascending upper bounds (+Inf is implied). */
  constructor(bounds: readonly number[]) {
    this.bounds = bounds;
    this.counts = bounds.map(() => 0);
  }

  /** Records one value. */
  observe(v: number): void {
    this.sum += v;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }
}

/** Seconds: from tens of milliseconds (a warm token) to minutes (a long queue on a slow adapter). */
const LATENCY_BOUNDS = [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/** What the queue looks like at scrape time. */
export interface QueueState {
  waiting: number;
  running: number;
  maxWaiting: number;
  /** Generations that may run at once (decoded together). */
  maxRunning: number;
}

/** The server's own counters. */
export class Metrics {
  /** By `route` and `status`; a client that left before the answer counts as status 499. */
  readonly requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  /** Request arrival → first generated text, queue wait included. */
  readonly timeToFirstToken = new Histogram(LATENCY_BOUNDS);
  /** Mean gap between generated tokens of one request, after the first. */
  readonly interTokenLatency = new Histogram(LATENCY_BOUNDS);
  /** Time spent waiting for the engine. */
  readonly queueWait = new Histogram(LATENCY_BOUNDS);
  /** Request arrival → last byte of the answer, for generation requests. */
  readonly duration = new Histogram(LATENCY_BOUNDS);

  /** Counts one answered request. */
  countRequest(route: string, status: number): void {
    const key = `${route}\u0000${status}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  /** The exposition text: the server's counters followed by the engine's figures. */
  render(stats: EngineStats, queue: QueueState, labels: { model: string }): string {
    const out = new Exposition();
    out.family("swapmoe_info", "gauge", "The model served, the residency policy and the adapter; always 1", [
      [{ model: labels.model, policy: stats.policy, gpu: stats.gpu.description }, 1],
    ]);
    out.family(
      "swapmoe_requests_total",
      "counter",
      "HTTP requests answered, by route and status (499: the client left first)",
      [...this.requests].map(([key, n]) => {
        const [route, status] = key.split("\u0000");
        return [{ route: route!, status: status! }, n];
      }),
    );
    out.family("swapmoe_prompt_tokens_total", "counter", "Prompt tokens of generation requests", [
      [{}, this.promptTokens],
    ]);
    out.family("swapmoe_completion_tokens_total", "counter", "Tokens generated for clients", [
      [{}, this.completionTokens],
    ]);
    out.histogram(
      "swapmoe_time_to_first_token_seconds",
      "Request arrival to the first generated text, queue wait included",
      this.timeToFirstToken,
    );
    out.histogram(
      "swapmoe_inter_token_latency_seconds",
      "Mean gap between generated tokens of a request, after the first",
      this.interTokenLatency,
    );
    out.histogram(
      "swapmoe_queue_wait_seconds",
      "Time a generation request waited for the engine",
      this.queueWait,
    );
    out.histogram(
      "swapmoe_request_duration_seconds",
      "Generation requests, arrival to last byte",
      this.duration,
    );
    out.family("swapmoe_queue_length", "gauge", "Requests waiting for the engine", [[{}, queue.waiting]]);
    out.family("swapmoe_queue_capacity", "gauge", "Most requests that may wait before 503", [
      [{}, queue.maxWaiting],
    ]);
    out.family("swapmoe_requests_running", "gauge", "Generations running on the engine", [[
      {},
      queue.running,
    ]]);
    out.family("swapmoe_requests_parallel", "gauge", "Most generations running at once (decoded together)", [[
      {},
      queue.maxRunning,
    ]]);

    out.family("swapmoe_gpu_bytes", "gauge", "Bytes held on the GPU now", [[{}, stats.gpuBytes]]);
    out.family("swapmoe_gpu_peak_bytes", "gauge", "Most bytes held on the GPU at once", [[
      {},
      stats.peakGpuBytes,
    ]]);
    out.family(
      "swapmoe_gpu_bytes_by_kind",
      "gauge",
      "Bytes held on the GPU now, by what they hold",
      Object.entries(stats.gpuBytesByKind).map(([kind, n]) => [{ kind }, n]),
    );
    out.family("swapmoe_budget_bytes", "gauge", "The GPU memory budget", [[{}, stats.budgetBytes]]);
    out.family("swapmoe_minimum_budget_bytes", "gauge", "The least budget the policy can run with", [
      [{}, stats.minimumBudgetBytes],
    ]);
    out.family("swapmoe_full_bytes", "gauge", "The all-resident footprint", [[{}, stats.fullBytes]]);
    out.family(
      "swapmoe_expert_slots",
      "gauge",
      "Expert slots on the GPU, by MoE layer",
      stats.expertSlots.map((n, layer) => [{ layer: String(layer) }, n]),
    );
    out.family(
      "swapmoe_expert_hit_rate",
      "gauge",
      "Share of routing choices served by the expert the unmasked router chose",
      [[{}, stats.hitRate]],
    );
    out.family(
      "swapmoe_expert_cache_hit_rate",
      "gauge",
      "Share of routing choices whose expert was resident when routed (differs from the hit rate under lru)",
      [[{}, stats.cacheHitRate]],
    );
    out.family("swapmoe_expert_swaps_total", "counter", "Experts swapped in by the policy", [[
      {},
      stats.swaps,
    ]]);
    out.family("swapmoe_expert_uploaded_bytes_total", "counter", "Expert bytes uploaded to the GPU", [
      [{}, stats.bytesUploaded],
    ]);
    out.family("swapmoe_expert_upload_seconds_total", "counter", "Time spent uploading experts", [
      [{}, stats.uploadSeconds],
    ]);
    const pacing = stats.uploadPacing;
    if (pacing) {
      // swapmoe's uploads paced by what they cost the decode steps (src/moe/upload_pacer.ts)
      out.family(
        "swapmoe_upload_share",
        "gauge",
        "Share of a decode step's time that expert uploads may take",
        [
          [{}, pacing.share],
        ],
      );
      out.family("swapmoe_upload_bytes_per_step", "gauge", "Expert bytes a decode step earns for uploads", [
        [{}, pacing.bytesPerStep],
      ]);
      out.family("swapmoe_upload_rate_bytes_per_second", "gauge", "Measured rate of expert uploads", [
        [{}, pacing.bytesPerSecond],
      ]);
      if (pacing.stepSeconds !== null) {
        out.family(
          "swapmoe_decode_step_seconds",
          "gauge",
          "A decode step's time without uploads, as measured",
          [
            [{}, pacing.stepSeconds],
          ],
        );
      }
      if (pacing.idleSeconds !== null) {
        out.family(
          "swapmoe_decode_step_idle_seconds",
          "gauge",
          "Of a decode step's time without uploads, the GPU's waiting between passes (on the GPU's clock)",
          [
            [{}, pacing.idleSeconds],
          ],
        );
      }
    }
    out.family("swapmoe_engine_tokens_total", "counter", "Tokens the engine processed, by phase", [
      [{ phase: "prefill" }, stats.prefillTokens],
      [{ phase: "decode" }, stats.decodeTokens],
    ]);
    out.family("swapmoe_tokens_per_second", "gauge", "The engine's mean throughput since start, by phase", [
      [{ phase: "prefill" }, stats.prefillTokensPerSecond],
      [{ phase: "decode" }, stats.decodeTokensPerSecond],
    ]);
    return out.text();
  }
}

type Sample = [labels: Record<string, string>, value: number];

/** Writes metric families in the text format. */
class Exposition {
  #lines: string[] = [];

  family(name: string, type: "counter" | "gauge", help: string, samples: Sample[]): void {
    this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) this.#lines.push(`${name}${formatLabels(labels)} ${formatValue(v)}`);
  }

  histogram(name: string, help: string, h: Histogram): void {
    this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    h.bounds.forEach((b, i) => this.#lines.push(`${name}_bucket{le="${formatValue(b)}"} ${h.counts[i]}`));
    this.#lines.push(
      `${name}_bucket{le="+Inf"} ${h.count}`,
      `${name}_sum ${formatValue(h.sum)}`,
      `${name}_count ${h.count}`,
    );
  }

  text(): string {
    return this.#lines.join("\n") + "\n";
  }
}

function formatLabels(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")}"`
  );
  return parts.length > 0 ? `{${parts.join(",")}}` : "";
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}
