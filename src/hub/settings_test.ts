import assert from "node:assert/strict";
import { HubError } from "../errors.ts";
import { hubSettings } from "./settings.ts";

const envOf = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("hubSettings: huggingface_hub's defaults", () => {
  const s = hubSettings(envOf({ HOME: "/home/u", HF_TOKEN_PATH: "/nonexistent/token" }));
  assert.equal(s.endpoint, "https://huggingface.co");
  assert.equal(s.cacheDir, "/home/u/.cache/huggingface/hub");
  assert.equal(s.token, undefined);
  assert.equal(s.offline, false);
  assert.equal(s.metadataTimeoutSeconds, 10);
});

Deno.test("hubSettings: HF_HUB_CACHE over HF_HOME over XDG_CACHE_HOME; ~ expanded", () => {
  const base = { HOME: "/home/u", HF_TOKEN_PATH: "/nonexistent/token" };
  assert.equal(hubSettings(envOf({ ...base, XDG_CACHE_HOME: "/xdg" })).cacheDir, "/xdg/huggingface/hub");
  assert.equal(
    hubSettings(envOf({ ...base, XDG_CACHE_HOME: "/xdg", HF_HOME: "~/hf" })).cacheDir,
    "/home/u/hf/hub",
  );
  assert.equal(hubSettings(envOf({ ...base, HF_HOME: "/hf", HF_HUB_CACHE: "/c" })).cacheDir, "/c");
  assert.equal(hubSettings(envOf({ ...base, HUGGINGFACE_HUB_CACHE: "/old" })).cacheDir, "/old");
});

Deno.test("hubSettings: HF_ENDPOINT without its trailing slash, HF_HUB_OFFLINE as huggingface_hub reads it", () => {
  const s = hubSettings(envOf({ HF_ENDPOINT: "https://hf-mirror.com/", HF_HUB_OFFLINE: "true", HOME: "/h" }));
  assert.equal(s.endpoint, "https://hf-mirror.com");
  assert.equal(s.offline, true);
  assert.equal(hubSettings(envOf({ HF_HUB_OFFLINE: "0", HOME: "/h" })).offline, false);
});

Deno.test("hubSettings: HF_TOKEN, else the token file that `hf auth login` writes", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/token`, "hf_fromfile\n");
    assert.equal(hubSettings(envOf({ HF_HOME: dir })).token, "hf_fromfile");
    assert.equal(hubSettings(envOf({ HF_HOME: dir, HF_TOKEN: "hf_env" })).token, "hf_env");
    assert.equal(hubSettings(envOf({ HF_HOME: "/nonexistent" })).token, undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("hubSettings: without HOME (or the permission to read it), HF_HUB_CACHE is needed", () => {
  assert.throws(() => hubSettings(envOf({})), HubError, "set HF_HUB_CACHE");
  assert.equal(hubSettings(envOf({ HF_HUB_CACHE: "/c" })).cacheDir, "/c");
});
