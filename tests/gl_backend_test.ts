/**
 * The engine on wgpu's OpenGL backend: where no Vulkan driver loads, Deno's WebGPU falls back to GL
 * (on a CPU machine, Mesa's llvmpipe through GL: no shader-f16, 16 storage buffers a stage). There
 * the router's top-k once lost a choice (a workgroup slot written by two threads across a barrier),
 * and every policy's logits came out NaN. This runs tiny-mixtral's parity tests on that backend, in a
 * child process whose Vulkan loader finds no driver.
 *
 * The child sometimes aborts while exiting, after it reported its results (seen once in CI: exit 134,
 * SIGABRT), as the whole suite's process does about one run in ten (.ci/run says so and runs it
 * again). Its cause in native teardown is not found; wgpu's GL backend has known exit crashes in other
 * setups (gfx-rs/wgpu#4650, #7665). The results are what this test checks: such a crash is said
 * loudly, with the child's last lines, and does not fail it. A crash before the results, or any
 * failed test, does.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** A Vulkan loader pointed at no driver: wgpu takes its GL backend. */
const NO_VULKAN = {
  VK_DRIVER_FILES: "/nonexistent/no_vulkan_icd.json",
  VK_ICD_FILENAMES: "/nonexistent/no_vulkan_icd.json",
};

async function child(args: string[]): Promise<{ code: number; out: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { ...NO_VULKAN, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code, out: d.decode(stdout) + d.decode(stderr) };
}

Deno.test("GL backend: tiny-mixtral's logits and greedy ids match transformers, full and masked", async () => {
  const probe = await child(["run", "-A", "--no-lock", "tests/gpu_probe.ts"]);
  assert.equal(probe.code, 0, `no adapter without Vulkan:\n${probe.out}`);
  // the GL backend offers no shader-f16 here; Vulkan's lavapipe does: this is not Vulkan
  assert.doesNotMatch(probe.out, /shader-f16/, `still on Vulkan?\n${probe.out}`);
  const r = await child([
    "test",
    "-A",
    "--no-check=remote",
    "--lock=deno.extra.lock",
    "tests/parity_test.ts",
    "--filter",
    "tiny-mixtral",
  ]);
  const tail = r.out.trimEnd().split("\n").slice(-30).join("\n");
  const passed = /^ok \| 2 passed \| 0 failed/m.test(r.out);
  if (r.code >= 128 && passed) {
    console.error(
      `WARNING: the GL child passed, then died of signal ${r.code - 128} while exiting:\n${tail}`,
    );
    return;
  }
  assert.equal(r.code, 0, `the GL child exited with ${r.code}:\n${tail}`);
  assert.ok(passed, `the GL child did not pass both tests:\n${tail}`);
});
