/**
 * Sizes `swapmoe`'s uploads in time, not in experts.
 *
 * An upload is `writeBuffer` on the decoding thread: the CPU copies the expert's bytes while the GPU
 * runs the steps already submitted. It costs nothing while the CPU stays ahead of the GPU, and stalls
 * every step once the CPU's own work per step (encoding, submitting) plus the uploads outlasts the
 * GPU's step. A fixed number of experts per step cannot know which: two OLMoE experts (25 MB) fit in a
 * step's slack on the H200, two experts of a Mixtral-shaped model (168 MiB, ~20 ms of copying) make
 * every step wait for them.
 *
 * So each decode step earns upload credit in bytes: `slackShare` of the step's measured slack (the
 * GPU's step time minus the CPU's own time for it) plus `wallShare` of the step's time (so that a host
 * with no slack, such as a software adapter that runs the work inside submit, still swaps, at a bounded
 * cost), at the measured upload rate. An upload spends the credit; an expert waits until the credit
 * covers it. Credit saved is capped at `bankSteps` steps' worth, or one waiting copy when that is more:
 * the CPU runs ahead of the GPU by about that many steps, so an upload of that size stays hidden.
 *
 * @module
 */

/** One readback batch's timing, as the scheduler measured it. */
export interface BatchTiming {
  /** Steps in the batch. */
  steps: number;
  /** Seconds from the batch's start (or the previous read, if later) to its read: the GPU's time, when it is the bottleneck. */
  wallSeconds: number;
  /** Seconds the CPU spent submitting the batch, its uploads included. */
  cpuSeconds: number;
  /** Seconds of that spent uploading experts. */
  uploadSeconds: number;
}

/** Tuning of {@link UploadPacer}; the defaults are the engine's. */
export interface PacerSettings {
  /** Share of a step's slack that uploads may take, in [0, 1]. */
  slackShare: number;
  /** Share of a step's whole time that uploads may take even without slack, in [0, 1]. */
  wallShare: number;
  /** Steps of credit that may be saved. */
  bankSteps: number;
  /** Batches of fewer steps do not update the estimate: a readback's fixed latency dominates them. */
  minSteps: number;
  /** Upload rate assumed until one is measured, bytes per second. */
  initialRate: number;
  /** Upload seconds a step earns until a batch has been measured. */
  initialStepSeconds: number;
}

/**
 * The engine's pacing: half the slack, 2 % of the step, 8 steps of credit; until a batch of 4 steps
 * has been timed, 2 ms a step at 4 GB/s (8 MB: small experts move at once, an 84 MiB one waits).
 */
export const DEFAULT_PACER: PacerSettings = {
  slackShare: 0.5,
  wallShare: 0.02,
  bankSteps: 8,
  minSteps: 4,
  initialRate: 4e9,
  initialStepSeconds: 0.002,
};

/** Uploads smaller than this do not update the rate: the call's fixed cost dominates them. */
const MIN_TIMED_UPLOAD = 1 << 20;
/** Weight of a new measurement in the running estimates. */
const EWMA = 0.3;

/** Upload credit per decode step, from measured step times and upload rates. */
export class UploadPacer {
  readonly settings: PacerSettings;
  #rate: number;
  #perStep: number;
  #credit = 0;
  /** The slack per step (seconds, a running estimate) and the batches it came from. */
  #slack = 0;
  #observed = 0;

  constructor(settings: Partial<PacerSettings> = {}) {
    this.settings = { ...DEFAULT_PACER, ...settings };
    this.#rate = this.settings.initialRate;
    this.#perStep = this.settings.initialStepSeconds * this.#rate;
  }

  /** Upload rate in bytes per second: measured, or assumed until measured. */
  get rate(): number {
    return this.#rate;
  }

  /** Bytes a step earns now. */
  get perStep(): number {
    return this.#perStep;
  }

  /** Credit saved, in bytes. */
  get credit(): number {
    return this.#credit;
  }

  /** The last slack estimate per step, seconds. */
  get slackSeconds(): number {
    return this.#slack;
  }

  /** A readback batch came back: update the slack per step and the credit a step earns. */
  observeBatch(t: BatchTiming): void {
    if (t.steps < this.settings.minSteps || !(t.wallSeconds > 0)) return;
    const step = t.wallSeconds / t.steps;
    const own = Math.max(0, t.cpuSeconds - t.uploadSeconds) / t.steps;
    const slack = Math.max(0, step - own);
    this.#slack = this.#observed === 0 ? slack : (1 - EWMA) * this.#slack + EWMA * slack;
    this.#observed++;
    const seconds = this.settings.slackShare * this.#slack + this.settings.wallShare * step;
    this.#perStep = seconds * this.#rate;
  }

  /** `bytes` were uploaded in `seconds`: update the rate. */
  observeUpload(bytes: number, seconds: number): void {
    if (bytes < MIN_TIMED_UPLOAD || !(seconds > 0)) return;
    const rate = bytes / seconds;
    this.#rate = (1 - EWMA) * this.#rate + EWMA * rate;
  }

  /**
   * A step begins: it earns its credit. Returns the bytes it may upload, given that the next waiting
   * copy costs `nextCost` bytes (0: nothing waits, and the credit saved stays within the bank).
   */
  step(nextCost: number): number {
    const bank = this.settings.bankSteps * this.#perStep;
    this.#credit = Math.min(this.#credit + this.#perStep, Math.max(bank, nextCost));
    return this.#credit;
  }

  /** `bytes` were uploaded this step. */
  spend(bytes: number): void {
    this.#credit = Math.max(0, this.#credit - bytes);
  }

  /** Forget the credit (the engine's budget or residents changed). */
  reset(): void {
    this.#credit = 0;
  }
}
