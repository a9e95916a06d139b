/** Prints the WebGPU adapter and exits non-zero when there is none (CI must not skip GPU tests). */
import { createGpu } from "../src/gpu/device.ts";

try {
  const gpu = await createGpu();
  console.log(
    `WebGPU adapter: ${gpu.info.description} (features: ${gpu.info.features.join(", ") || "none"})`,
  );
  gpu.device.destroy();
} catch (e) {
  console.error(`No WebGPU adapter: ${(e as Error).message}`);
  Deno.exit(1);
}
