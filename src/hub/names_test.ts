import assert from "node:assert/strict";
import { OptionError } from "../errors.ts";
import { checkRevision, isCommitHash, isSafeRepoPath, parseModelName } from "./names.ts";

Deno.test("parseModelName: org/name with an optional @revision; main by default", () => {
  assert.deepEqual(parseModelName("allenai/OLMoE-1B-7B-0924"), {
    repo: "allenai/OLMoE-1B-7B-0924",
    revision: "main",
  });
  assert.deepEqual(parseModelName("Qwen/Qwen1.5-MoE-A2.7B@v1.0"), {
    repo: "Qwen/Qwen1.5-MoE-A2.7B",
    revision: "v1.0",
  });
  assert.deepEqual(parseModelName("a/b@refs/pr/1"), { repo: "a/b", revision: "refs/pr/1" });
  const sha = "0123456789abcdef0123456789abcdef01234567";
  assert.deepEqual(parseModelName(`a/b@${sha}`), { repo: "a/b", revision: sha });
});

Deno.test("parseModelName: paths and invalid ids are not hub names", () => {
  for (
    const name of [
      "gpt2", // no organisation: taken for a folder
      "./a/b",
      "/abs/path",
      "a/b/c",
      "models/",
      "a--b/c",
      "a/b..c",
      "a/b.git",
      "a/-b",
      "~/models/x",
      "",
      `a/${"x".repeat(100)}`,
    ]
  ) {
    assert.equal(parseModelName(name), undefined, name);
  }
});

Deno.test("parseModelName: a hub name with an unusable revision is an OptionError", () => {
  for (const name of ["a/b@", "a/b@../x", "a/b@x y", "a/b@refs//pr"]) {
    assert.throws(() => parseModelName(name), OptionError, name);
  }
  assert.throws(() => checkRevision("../../x"), OptionError);
  checkRevision("refs/pr/1");
});

Deno.test("isCommitHash and isSafeRepoPath", () => {
  assert.ok(isCommitHash("0123456789abcdef0123456789abcdef01234567"));
  assert.ok(!isCommitHash("main"));
  assert.ok(!isCommitHash("0123456789ABCDEF0123456789abcdef01234567"));
  assert.ok(isSafeRepoPath("model-00001-of-00002.safetensors"));
  assert.ok(isSafeRepoPath("sub/dir/file.json"));
  for (const p of ["", "../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a/.."]) {
    assert.ok(!isSafeRepoPath(p), p);
  }
});
