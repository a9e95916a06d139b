/**
 * Adapter and device setup: ask for the limits the engine needs, report what it got, and turn
 * WebGPU's failure modes into typed errors.
 *
 * @module
 */
import { DeviceLostError, GpuError, SwapMoeError, WebGpuUnavailableError } from "../errors.ts";

/** What the engine runs on, as reported by the adapter. */
export interface GpuInfo {
  /** Adapter description, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly description: string;
  /** Adapter vendor as WebGPU reports it (a name or a PCI id). */
  readonly vendor: string;
  /** Whether the adapter is a software fallback. */
  readonly isFallbackAdapter: boolean;
  /** Optional features the device was created with (e.g. `shader-f16`, `timestamp-query`). */
  readonly features: readonly string[];
  /** Largest buffer the device allows, in bytes. */
  readonly maxBufferSize: number;
  /** Largest storage-buffer binding, in bytes. */
  readonly maxStorageBufferBindingSize: number;
  /** Storage buffers one shader stage may bind. */
  readonly maxStorageBuffersPerShaderStage: number;
  /** Workgroup shared memory, in bytes. */
  readonly maxComputeWorkgroupStorageSize: number;
}

/** A WebGPU device with its facts and a lost-device latch. */
export interface Gpu {
  readonly device: GPUDevice;
  readonly info: GpuInfo;
  /** Set once the device is lost; every later GPU call should throw it. */
  readonly lost: DeviceLostError | undefined;
  /**
   * The first GPU error no error scope caught (e.g. a buffer over the device's limits, a binding too
   * large): work submitted since may have computed garbage, so every later GPU call should throw it.
   */
  readonly failed: GpuError | undefined;
  /** Throws {@link DeviceLostError} when the device has been lost, or {@link Gpu.failed}. */
  assertAlive(): void;
  /**
   * The typed error behind `error`, thrown by a GPU call: the device's loss or first uncaught error
   * when there is one (a loss is reported a task after the failures it causes, so this waits one), a
   * WebGPU `DOMException` (e.g. a rejected `mapAsync`) as {@link GpuError}, anything else as it is.
   */
  explain(error: unknown): Promise<unknown>;
}

/**
 * Requests an adapter and a device with the largest buffer limits the adapter offers.
 *
 * On Linux, when `XDG_RUNTIME_DIR` is unset, sets it first (see {@link quietWayland}).
 */
export async function createGpu(options: { powerPreference?: GPUPowerPreference } = {}): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new WebGpuUnavailableError("WebGPU is not available in this runtime: navigator.gpu is missing");
  }
  quietWayland();
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) {
    throw new WebGpuUnavailableError(
      "No WebGPU adapter found: install a GPU driver with Vulkan support, or Mesa's lavapipe (Debian: mesa-vulkan-drivers) to run on the CPU",
    );
  }
  const wanted: GPUFeatureName[] = ["shader-f16", "timestamp-query"];
  const features = wanted.filter((f) => adapter.features.has(f));
  const l = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxBufferSize: l.maxBufferSize,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    // router.wgsl's main binds 10, Step and Params included (read-only storage, see common.wgsl)
    maxStorageBuffersPerShaderStage: Math.min(l.maxStorageBuffersPerShaderStage, 10),
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: Math.min(l.maxComputeInvocationsPerWorkgroup, 256),
    maxComputeWorkgroupSizeX: Math.min(l.maxComputeWorkgroupSizeX, 256),
  };
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  } catch (e) {
    throw new WebGpuUnavailableError(`Cannot create a WebGPU device: ${(e as Error).message}`, { cause: e });
  }
  const info = adapter.info;
  let lost: DeviceLostError | undefined;
  let failed: GpuError | undefined;
  const gpu: Gpu = {
    device,
    info: {
      description: info.description || info.device || "unknown adapter",
      vendor: info.vendor,
      isFallbackAdapter: (info as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false,
      features,
      maxBufferSize: device.limits.maxBufferSize,
      maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
      maxStorageBuffersPerShaderStage: device.limits.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
    },
    get lost() {
      return lost;
    },
    get failed() {
      return failed;
    },
    assertAlive() {
      if (lost) throw lost;
      if (failed) throw failed;
    },
    async explain(error) {
      if (error instanceof SwapMoeError && !(error instanceof GpuError)) return error;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([device.lost, new Promise((r) => (timer = setTimeout(r, 0)))]);
      clearTimeout(timer);
      if (lost || failed) return lost ?? failed;
      if (error instanceof DOMException) {
        return new GpuError(`GPU operation failed: ${error.name}: ${error.message}`, { cause: error });
      }
      return error;
    },
  };
  device.addEventListener("uncapturederror", (event) => {
    const error = (event as GPUUncapturedErrorEvent).error;
    const kind = error instanceof GPUOutOfMemoryError ? "Out of GPU memory" : "GPU validation failed";
    failed ??= new GpuError(`${kind}: ${error.message}`);
    event.preventDefault(); // reported through assertAlive instead of the console
  });
  device.lost.then((i) => {
    lost = new DeviceLostError(`The GPU device was lost (${i.reason}): ${i.message || "no message"}`);
  });
  return gpu;
}

/**
 * Requesting an adapter makes Mesa's Vulkan drivers try Wayland, and libwayland prints "error:
 * XDG_RUNTIME_DIR is invalid or not set in the environment." twice on stderr when that variable is
 * unset or not an absolute path (containers, CI, ssh without a login session); the adapter is found
 * all the same. So, on Linux with the variable unset, set it for this process (and its children) to
 * a private folder, `$TMPDIR/swapmoe-xdg-<uid>` (`/tmp` without `TMPDIR`), created with mode 700
 * when writing there is permitted (libwayland only needs the variable to be an absolute path; it
 * then finds no display socket there, as it would find none anywhere). Only with permissions already
 * granted, so it never prompts: without `--allow-env` the line stays.
 */
function quietWayland(): void {
  if (Deno.build.os !== "linux" || !granted({ name: "env", variable: "XDG_RUNTIME_DIR" })) return;
  if (Deno.env.get("XDG_RUNTIME_DIR")) return;
  const tmp = (granted({ name: "env", variable: "TMPDIR" }) && Deno.env.get("TMPDIR")) || "/tmp";
  const uid = granted({ name: "sys", kind: "uid" }) ? Deno.uid() : null;
  const dir = `${tmp.replace(/\/+$/, "")}/swapmoe-xdg-${uid ?? "user"}`;
  if (granted({ name: "write", path: dir })) {
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch {
      // the variable alone quiets libwayland
    }
  }
  Deno.env.set("XDG_RUNTIME_DIR", dir);
}

/** Whether `permission` is granted now (a query: never a prompt). */
function granted(permission: Deno.PermissionDescriptor): boolean {
  try {
    return Deno.permissions.querySync(permission).state === "granted";
  } catch {
    return false;
  }
}
