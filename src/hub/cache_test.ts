import assert from "node:assert/strict";
import { join } from "node:path";
import { HubCache } from "./cache.ts";
import { missingCheckpointFiles } from "./files.ts";

const COMMIT = "0123456789abcdef0123456789abcdef01234567";

function withCache(fn: (cache: HubCache, root: string) => void): void {
  const root = Deno.makeTempDirSync({ prefix: "swapmoe-cache-" });
  try {
    fn(new HubCache(root), root);
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
}

Deno.test("HubCache: huggingface_hub's paths", () => {
  const c = new HubCache("/c");
  assert.equal(c.repoDir("org/name"), "/c/models--org--name");
  assert.equal(c.blobPath("org/name", "ab"), "/c/models--org--name/blobs/ab");
  assert.equal(c.incompletePath("org/name", "ab"), "/c/models--org--name/blobs/ab.incomplete");
  assert.equal(c.snapshotDir("org/name", COMMIT), `/c/models--org--name/snapshots/${COMMIT}`);
  assert.equal(c.lockPath("org/name", "ab"), "/c/.locks/models--org--name/ab.lock");
});

Deno.test("HubCache: snapshot files are relative symlinks to blobs, nested paths included", () => {
  withCache((c) => {
    Deno.mkdirSync(join(c.repoDir("o/n"), "blobs"), { recursive: true });
    Deno.writeTextFileSync(c.blobPath("o/n", "b1"), "{}");
    c.link("o/n", COMMIT, "config.json", "b1");
    c.link("o/n", COMMIT, "sub/dir/x.json", "b1");
    const snap = c.snapshotDir("o/n", COMMIT);
    assert.equal(Deno.readLinkSync(join(snap, "config.json")), "../../blobs/b1");
    assert.equal(Deno.readLinkSync(join(snap, "sub/dir/x.json")), "../../../../blobs/b1");
    assert.equal(Deno.readTextFileSync(join(snap, "sub/dir/x.json")), "{}");
    assert.ok(c.hasFile("o/n", COMMIT, "config.json"));
    assert.ok(!c.hasFile("o/n", COMMIT, "tokenizer.json"));
    // linking again replaces the link
    c.link("o/n", COMMIT, "config.json", "b1");
    assert.equal(c.blobSize("o/n", "b1"), 2);
    assert.equal(c.blobSize("o/n", "b2"), undefined);
  });
});

Deno.test("HubCache: refs name commits; a commit hash needs none", () => {
  withCache((c) => {
    c.writeRef("o/n", "main", COMMIT);
    c.writeRef("o/n", "refs/pr/1", COMMIT);
    c.writeRef("o/n", COMMIT, COMMIT);
    assert.equal(Deno.readTextFileSync(join(c.repoDir("o/n"), "refs", "main")), COMMIT);
    assert.equal(c.commitOf("o/n", "main"), COMMIT);
    assert.equal(c.commitOf("o/n", "refs/pr/1"), COMMIT);
    assert.equal(c.commitOf("o/n", "v2"), undefined);
    assert.equal(c.commitOf("o/n", COMMIT), COMMIT);
    assert.deepEqual([...Deno.readDirSync(join(c.repoDir("o/n"), "refs"))].map((e) => e.name).sort(), [
      "main",
      "refs",
    ]);
  });
});

Deno.test("HubCache: list, inspect and remove count blobs and partial downloads apart", () => {
  withCache((c, root) => {
    assert.deepEqual(c.list(), []);
    const blobs = join(c.repoDir("o/n"), "blobs");
    Deno.mkdirSync(blobs, { recursive: true });
    Deno.writeFileSync(join(blobs, "a"), new Uint8Array(10));
    Deno.writeFileSync(join(blobs, "b.incomplete"), new Uint8Array(4));
    c.link("o/n", COMMIT, "config.json", "a");
    c.writeRef("o/n", "main", COMMIT);
    Deno.mkdirSync(join(root, "datasets--o--d"));
    Deno.mkdirSync(join(root, ".locks", "models--o--n"), { recursive: true });
    const [m, ...rest] = c.list();
    assert.deepEqual(rest, [], "datasets and locks are not models");
    assert.equal(m?.repo, "o/n");
    assert.equal(m?.bytes, 10);
    assert.equal(m?.incompleteBytes, 4);
    assert.deepEqual(m?.refs, { main: COMMIT });
    assert.deepEqual(m?.snapshots.map((s) => [s.commit, s.files, s.complete]), [[
      COMMIT,
      ["config.json"],
      false,
    ]]);
    assert.equal(c.remove("o/n")?.bytes, 10);
    assert.equal(c.remove("o/n"), undefined);
    assert.deepEqual([...Deno.readDirSync(root)].map((e) => e.name).sort(), [".locks", "datasets--o--d"]);
    assert.deepEqual([...Deno.readDirSync(join(root, ".locks"))], [], "its locks went too");
  });
});

Deno.test("missingCheckpointFiles: config, and the single file or every shard the index names", () => {
  withCache((_c, dir) => {
    assert.deepEqual(missingCheckpointFiles(dir), ["config.json", "model.safetensors"]);
    Deno.writeTextFileSync(join(dir, "config.json"), "{}");
    Deno.writeTextFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { a: "s1.safetensors", b: "s2.safetensors", c: "s1.safetensors" } }),
    );
    Deno.writeTextFileSync(join(dir, "s1.safetensors"), "");
    assert.deepEqual(missingCheckpointFiles(dir), ["s2.safetensors"]);
    Deno.writeTextFileSync(join(dir, "s2.safetensors"), "");
    assert.deepEqual(missingCheckpointFiles(dir), []);
    Deno.writeTextFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { a: "../x" } }),
    );
    assert.deepEqual(
      missingCheckpointFiles(dir),
      ["model.safetensors.index.json"],
      "an index naming ../x is unusable",
    );
  });
});
