/**
 * Sizes `swapmoe`'s uploads in time, not in experts, by what they measurably cost the decode steps.
 *
 * An upload is `writeBuffer` on the decoding thread: the CPU copies the expert's bytes while the GPU
 * runs the steps already submitted, and the GPU then copies them into place. It costs nothing while
 * the CPU stays ahead of the GPU, and stalls the steps once it does not. How much can be hidden depends
 * on the host, the model and the batch: two OLMoE experts (25 MB) a step cost a few %, two experts of
 * a Mixtral-shaped model (168 MiB, ~20 ms of copying) made every step wait for them (93 against 254
 * tok/s on the H200). So the pacer measures the cost instead of predicting it, timing the steps with
 * the GPU's timestamps where the device has them (the host's readbacks resolve on a ~10 ms poll and
 * can come back bunched, so a batch read just after another looked many times faster than it ran):
 *
 * - A **baseline**: the time per step of batches that uploaded nothing, per number of decoding
 *   sequences (a batch of eight sequences takes longer than one of one). When a baseline is missing or
 *   `probeEvery` batches old, the next batch is a probe: it uploads nothing and measures it. A batch
 *   that uploaded and still waited less (ran faster, on the host's clock) than the baseline lowers it
 *   to its own: uploads only add time, so the probe met a slow spell. On the GPU's clock every batch
 *   also measures the passes' own time, and the baseline's step follows it down.
 * - A **share** of that step time that uploads may take, at the measured upload rate, adjusted after
 *   every batch that uploaded (additive increase, multiplicative decrease): a batch whose uploads cost
 *   more than `tolerance` of a step halves it, one within it raises it by `maxShare / 16`.
 * - **What uploads cost.** On the GPU's clock the timestamps say, step by step, when the GPU ran a
 *   step's pass and when it waited between passes. Uploads can only add waiting: the host's copy of an
 *   expert delays the next submit, and the GPU's copy into the slot runs on the same queue between two
 *   passes. So a batch's cost is the waiting a step beyond the baseline's, as a share of the step;
 *   the passes' own time, which moves by several % between batches with the GPU's clocks and whatever
 *   else shares it, is left out of the comparison (it halved the share on noise, H200 2026-12-03:
 *   `swapmoe@4GiB` settled at a share of 0.05 and swapped half as often). On the host's clock only the
 *   whole time is known, and the batch's steps are compared with the baseline's.
 * - **Credit**: a step earns its share in bytes, an upload spends it, and an expert waits until the
 *   credit covers it. Credit saved is capped at `bankSteps` steps' worth, or one waiting copy when that
 *   is more.
 *
 * @module
 */

/** One readback batch as the scheduler ran it. */
export interface BatchTiming {
  /** Steps in the batch. */
  steps: number;
  /** The sequences decoding in it when it began: the baseline's key. */
  sequences: number;
  /** Whether a step also prefilled a prompt chunk (its steps are not like the baseline's). */
  prefill: boolean;
  /** Whether it was a probe ({@link UploadPacer.beginBatch}'s answer). */
  probe: boolean;
  /**
   * Seconds its steps took: on the GPU's clock where the device has timestamp queries (from the end of
   * its first step to the end of its last, scaled to all its steps), else on the host's, from the
   * batch's start (or the previous read, if later) to its read.
   */
  wallSeconds: number;
  /**
   * Seconds of uploads its time may include: its own; on the host's clock also those of the batch
   * submitted while it ran (its read is seen only once that batch is submitted).
   */
  uploadSeconds: number;
  /**
   * On the GPU's clock: the part of `wallSeconds` the steps' passes ran (the rest the GPU waited
   * between them for the host's submits and the uploads' copies), scaled the same way.
   */
  busySeconds?: number;
}

/** Tuning of {@link UploadPacer}; the defaults are the engine's. */
export interface PacerSettings {
  /** A batch that uploaded may take this much longer per step than the baseline (0.04: 4 %). */
  tolerance: number;
  /** Largest share of a step's time that uploads may take. */
  maxShare: number;
  /** Smallest share: uploads never stop altogether. */
  minShare: number;
  /** Share to start from. */
  initialShare: number;
  /** Steps of credit that may be saved. */
  bankSteps: number;
  /** Batches of fewer steps are not measured: a readback's fixed latency dominates them. */
  minSteps: number;
  /**
   * Only batches of this many steps probe (the scheduler's longest), so that a short generation
   * swaps from its first steps instead of spending them measuring.
   */
  probeSteps: number;
  /** Batches after which a baseline is measured again. */
  probeEvery: number;
  /** Upload rate assumed until one is measured, bytes per second. */
  initialRate: number;
  /** Upload seconds a step earns while no baseline exists for its batch. */
  initialStepSeconds: number;
}

/**
 * The engine's pacing: within 4 % of the steps without uploads, uploads taking 1–50 % of a step's time
 * (10 % to start), 8 steps of credit, a probe of two 16-step batches every 16 batches; before a
 * baseline, 2 ms a step at 4 GB/s (8 MB: small experts move at once, an 84 MiB one waits).
 */
export const DEFAULT_PACER: PacerSettings = {
  tolerance: 0.04,
  maxShare: 0.5,
  minShare: 0.01,
  initialShare: 0.1,
  bankSteps: 8,
  minSteps: 4,
  probeSteps: 16,
  probeEvery: 16,
  initialRate: 4e9,
  initialStepSeconds: 0.002,
};

/** Uploads smaller than this do not update the rate: the call's fixed cost dominates them. */
const MIN_TIMED_UPLOAD = 1 << 20;
/** Weight of a new measurement in the running estimates. */
const EWMA = 0.3;

/**
 * A baseline: seconds per step without uploads, of them the seconds the GPU waited between passes
 * (on the GPU's clock), and batches since it was measured.
 */
interface Baseline {
  stepSeconds: number;
  idleSeconds?: number;
  age: number;
}

/** Upload credit per decode step, from measured step times with and without uploads. */
export class UploadPacer {
  readonly settings: PacerSettings;
  #rate: number;
  #share: number;
  #credit = 0;
  readonly #baselines = new Map<number, Baseline>();
  /** Keys with a probe submitted and not read back yet: no second probe meanwhile. */
  readonly #probing = new Set<number>();
  /** Probe batches still to submit: a probe is two batches, since the second's CPU time is in the first's wall. */
  #probeLeft = 0;
  /** The batch being submitted: its key, and whether it is a probe (no uploads). */
  #sequences = 0;
  #probe = false;

  constructor(settings: Partial<PacerSettings> = {}) {
    this.settings = { ...DEFAULT_PACER, ...settings };
    this.#rate = this.settings.initialRate;
    this.#share = this.settings.initialShare;
  }

  /** Upload rate in bytes per second: measured, or assumed until measured. */
  get rate(): number {
    return this.#rate;
  }

  /** Share of a step's time that uploads may take now. */
  get share(): number {
    return this.#share;
  }

  /** Seconds per step without uploads for `sequences` decoding sequences, if measured. */
  baseline(sequences: number): number | undefined {
    return this.#baselines.get(sequences)?.stepSeconds;
  }

  /** Seconds per step without uploads for the batches being submitted, if measured. */
  get stepSeconds(): number | undefined {
    return this.#baselines.get(this.#sequences)?.stepSeconds;
  }

  /** Of {@link stepSeconds}, the seconds the GPU waited between passes, if measured on the GPU's clock. */
  get idleSeconds(): number | undefined {
    return this.#baselines.get(this.#sequences)?.idleSeconds;
  }

  /** Bytes a step of the batch being submitted earns (0 in a probe). */
  get perStep(): number {
    if (this.#probe) return 0;
    const base = this.#baselines.get(this.#sequences);
    return (base ? this.#share * base.stepSeconds : this.settings.initialStepSeconds) * this.#rate;
  }

  /** Credit saved, in bytes. */
  get credit(): number {
    return this.#credit;
  }

  /** Whether the batch being submitted is a probe. */
  get probing(): boolean {
    return this.#probe;
  }

  /**
   * A batch of `steps` steps with `sequences` decoding begins: it is a probe when it can be measured,
   * its baseline is missing or old, and no probe for it is in flight. Returns whether it is one.
   */
  beginBatch(steps: number, sequences: number): boolean {
    if (sequences === 0) {
      // prompts only: nothing to measure; a step earns what the last decode steps did
      return this.#probe = false;
    }
    const base = this.#baselines.get(sequences);
    if (this.#probeLeft > 0 && sequences === this.#sequences) {
      this.#probeLeft--;
      return this.#probe = true;
    }
    this.#sequences = sequences;
    this.#probeLeft = 0;
    this.#probe = steps >= this.settings.probeSteps && !this.#probing.has(sequences) &&
      (!base || base.age >= this.settings.probeEvery);
    if (this.#probe) {
      this.#probing.add(sequences);
      this.#probeLeft = 1;
    }
    return this.#probe;
  }

  /** A batch was read back: update its baseline, or the share from how much its uploads cost. */
  observeBatch(t: BatchTiming): void {
    // a probe is back, measured or not (a generation that ended may have cut it short)
    if (t.probe) this.#probing.delete(t.sequences);
    if (t.steps < this.settings.minSteps || t.prefill || !(t.wallSeconds > 0)) return;
    const step = t.wallSeconds / t.steps;
    const busy = t.busySeconds;
    const idle = busy !== undefined && busy >= 0 && busy <= t.wallSeconds
      ? (t.wallSeconds - busy) / t.steps
      : undefined;
    const base = this.#baselines.get(t.sequences);
    if (t.uploadSeconds === 0) {
      const mix = (old: number | undefined, now: number) =>
        old === undefined ? now : (1 - EWMA) * old + EWMA * now;
      this.#baselines.set(t.sequences, {
        stepSeconds: mix(base?.stepSeconds, step),
        idleSeconds: idle === undefined ? undefined : mix(base?.idleSeconds, idle),
        age: 0,
      });
      return;
    }
    if (!base) return;
    base.age++;
    const s = this.settings;
    let over: boolean;
    if (idle !== undefined && base.idleSeconds !== undefined) {
      // the GPU's clock: every batch measures the passes' own time too. Passes faster than the baseline's
      // show that its probe met a slow spell (an engine's first steps after the load: 4.9 ms a step against
      // 2.7 later, H200 2026-12-03, which sized every step's credit for 16 batches), and the baseline
      // follows them down; slower ones may be the uploads' copies sharing the memory: only probes raise it
      const busy = base.stepSeconds - base.idleSeconds;
      const passes = step - idle;
      if (idle < base.idleSeconds) base.idleSeconds = idle; // (as below: the probe waited more)
      base.stepSeconds = base.idleSeconds + (passes < busy ? (1 - EWMA) * busy + EWMA * passes : busy);
      // the waiting between passes beyond the baseline's, against a step of this batch
      over = idle - base.idleSeconds > s.tolerance * (step - idle + base.idleSeconds);
    } else {
      // uploads only add time: steps that uploaded and still ran faster show the baseline too high (a
      // probe that met a slow spell); lower it to them, and the next probe measures it again
      if (step < base.stepSeconds) base.stepSeconds = step;
      over = step > (1 + s.tolerance) * base.stepSeconds;
    }
    this.#share = over
      ? Math.max(s.minShare, this.#share / 2)
      : Math.min(s.maxShare, this.#share + s.maxShare / 16);
  }

  /** Seconds a step of `sequences` sequences waited between passes without uploads, if measured on the GPU's clock. */
  baselineIdle(sequences: number): number | undefined {
    return this.#baselines.get(sequences)?.idleSeconds;
  }

  /** `bytes` were uploaded in `seconds`: update the rate. */
  observeUpload(bytes: number, seconds: number): void {
    if (bytes < MIN_TIMED_UPLOAD || !(seconds > 0)) return;
    this.#rate = (1 - EWMA) * this.#rate + EWMA * (bytes / seconds);
  }

  /**
   * A step begins: it earns its credit. Returns the bytes it may upload, given that the next waiting
   * copy costs `nextCost` bytes (0: nothing waits, and the credit saved stays within the bank).
   */
  step(nextCost: number): number {
    if (this.#probe) return 0;
    const per = this.perStep;
    this.#credit = Math.min(this.#credit + per, Math.max(this.settings.bankSteps * per, nextCost));
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
