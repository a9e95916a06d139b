/**
 * Models by name from the Hugging Face hub, against a fake hub (tests/support/fake_hub.ts) serving
 * tests/fixtures/tiny-mixtral (two shards and an index) through the hub's routes with its headers:
 * downloads in the hub cache layout, redirects, resumption, verification, gated repos, missing files,
 * offline use, list and rm, a cache made by another tool, and the CLI end to end.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CheckpointError, HubError, OptionError } from "../src/errors.ts";
import { listCachedModels, pullModel, removeCachedModel, resolveModel } from "../src/hub/mod.ts";
import type { ModelInfo } from "../src/cli/info.ts";
import { runMain } from "./support/cli.ts";
import { type FakeHub, type FakeRepo, startFakeHub } from "./support/fake_hub.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const FIXTURE = join(ROOT, "tests/fixtures/tiny-mixtral");
const REPO = "test-org/tiny-mixtral";
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const SHARD1 = "model-00001-of-00002.safetensors";
const SHARD2 = "model-00002-of-00002.safetensors";
/** What the engine reads of the fixture; reference.* and README.md stay on the hub. */
const ENGINE_FILES = [
  "chat_template.jinja",
  "config.json",
  "generation_config.json",
  SHARD1,
  SHARD2,
  "model.safetensors.index.json",
  "tokenizer.json",
  "tokenizer_config.json",
].sort();
const SNAPSHOT = (cache: string) => join(cache, "models--test-org--tiny-mixtral", "snapshots", COMMIT);
const size = (file: string) => Deno.statSync(join(FIXTURE, file)).size;
const TOTAL = ENGINE_FILES.reduce((a, f) => a + size(f), 0);

const HUB_VARIABLES = [
  "HF_ENDPOINT",
  "HF_HUB_CACHE",
  "HF_TOKEN",
  "HF_HUB_OFFLINE",
  "HF_TOKEN_PATH",
  "HF_HOME",
];

/**
 * Runs `fn` with a fake hub serving `repos` (the fixture as `REPO` by default) and a fresh cache, with
 * `HF_ENDPOINT` and `HF_HUB_CACHE` pointing at them and no token; `env` adds variables.
 */
async function withHub(
  fn: (hub: FakeHub, cache: string) => Promise<void>,
  options: { repo?: Partial<FakeRepo>; env?: Record<string, string> } = {},
): Promise<void> {
  await using hub = startFakeHub({
    [REPO]: { dir: FIXTURE, commit: COMMIT, extra: { "README.md": "# tiny\n" }, ...options.repo },
  });
  const cache = await Deno.makeTempDir({ prefix: "swapmoe-hub-" });
  const saved = new Map(HUB_VARIABLES.map((k) => [k, Deno.env.get(k)]));
  for (const k of HUB_VARIABLES) Deno.env.delete(k);
  Deno.env.set("HF_ENDPOINT", hub.endpoint);
  Deno.env.set("HF_HUB_CACHE", cache);
  Deno.env.set("HF_TOKEN_PATH", join(cache, "no-token-file"));
  for (const [k, v] of Object.entries(options.env ?? {})) Deno.env.set(k, v);
  try {
    await fn(hub, cache);
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    await Deno.remove(cache, { recursive: true });
  }
}

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const gitBlobId = (bytes: Uint8Array) =>
  createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
const blobIdOf = (file: string) => {
  const bytes = Deno.readFileSync(join(FIXTURE, file));
  return file.endsWith(".safetensors") ? sha256(bytes) : gitBlobId(bytes);
};

function filesIn(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

/** Requests to the CDN (or the hub's resolve route) for `file`. */
const requestsFor = (hub: FakeHub, file: string) =>
  hub.log.filter((e) =>
    (e.server === "cdn" && e.path.includes(`file=${encodeURIComponent(file)}`)) ||
    (e.server === "hub" && e.path.endsWith(`/${file}`))
  );

async function rejectsWith(
  p: Promise<unknown>,
  cls: abstract new (...args: never[]) => Error,
  pattern: RegExp,
): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof cls, `${cls.name} expected, got ${(e as Error).name}: ${(e as Error).message}`);
    assert.match(e.message, pattern);
    return e;
  }
  throw new assert.AssertionError({ message: `rejection with ${pattern} expected` });
}

Deno.test("hub: a pull fetches only the engine's files into the hub cache layout, each matching the hub's", async () => {
  await withHub(async (hub, cache) => {
    const r = await resolveModel(REPO, { retryDelayMs: 10 });
    assert.equal(r.dir, SNAPSHOT(cache));
    assert.deepEqual([r.repo, r.revision, r.commit, r.fromCache, r.offline], [
      REPO,
      "main",
      COMMIT,
      false,
      false,
    ]);
    assert.equal(r.downloadedBytes, TOTAL);
    assert.equal(r.message, undefined);
    assert.deepEqual(filesIn(r.dir), ENGINE_FILES, "no reference.* nor README.md");
    const repoDir = join(cache, "models--test-org--tiny-mixtral");
    for (const f of ENGINE_FILES) {
      assert.deepEqual(Deno.readFileSync(join(r.dir, f)), Deno.readFileSync(join(FIXTURE, f)), f);
      // a relative symlink to blobs/<sha256> (LFS) or blobs/<git blob id>, as huggingface_hub makes them
      assert.equal(Deno.readLinkSync(join(r.dir, f)), `../../blobs/${blobIdOf(f)}`, f);
    }
    assert.deepEqual(
      filesIn(join(repoDir, "blobs")),
      ENGINE_FILES.map(blobIdOf).sort(),
      "no .incomplete left",
    );
    assert.equal(Deno.readTextFileSync(join(repoDir, "refs", "main")), COMMIT);
    assert.ok(!hub.log.some((e) => /reference|README/.test(e.path)), "nothing else was requested");
    const listing = hub.log.filter((e) => e.path.startsWith("/api/"));
    assert.deepEqual(listing.map((e) => e.path), [`/api/models/${REPO}/revision/main?blobs=true`]);
    // every file at the listed commit, not at "main" (which could move during the download)
    for (const e of hub.log.filter((e) => e.path.includes("/resolve/"))) {
      assert.ok(e.path.includes(`/resolve/${COMMIT}/`), e.path);
    }
  });
});

Deno.test("hub: LFS files come through a 302 to a CDN on another origin, which never sees the token", async () => {
  await withHub(async (hub) => {
    await pullModel(REPO, { retryDelayMs: 10 });
    for (const shard of [SHARD1, SHARD2]) {
      const [resolve, cdn, ...more] = requestsFor(hub, shard);
      assert.deepEqual(more, []);
      assert.deepEqual([resolve?.server, resolve?.status], ["hub", 302]);
      assert.equal(resolve?.authorization, "Bearer hf_secret", "the hub gets the token");
      assert.deepEqual([cdn?.server, cdn?.status, cdn?.authorization], ["cdn", 200, undefined]);
    }
    // files kept in git come from the hub itself
    assert.deepEqual(requestsFor(hub, "config.json").map((e) => [e.server, e.status]), [["hub", 200]]);
  }, { repo: { token: "hf_secret" }, env: { HF_TOKEN: "hf_secret" } });
});

Deno.test("hub: a connection dropped mid-file is resumed with Range from the bytes on disk", async () => {
  await withHub(async (hub, cache) => {
    const seen: number[] = [];
    const r = await pullModel(REPO, {
      retryDelayMs: 10,
      onProgress: (p) => seen.push(p.bytes),
    });
    const cdn = requestsFor(hub, SHARD1).filter((e) => e.server === "cdn");
    assert.deepEqual(cdn.map((e) => [e.status, e.range]), [[200, undefined], [206, "bytes=100000-"]]);
    assert.equal(r.downloadedBytes, TOTAL, "no byte fetched twice");
    assert.deepEqual(
      Deno.readFileSync(join(SNAPSHOT(cache), SHARD1)),
      Deno.readFileSync(join(FIXTURE, SHARD1)),
    );
    assert.ok(seen.every((b, i) => i === 0 || b >= seen[i - 1]!), "progress only grows");
    assert.equal(seen.at(-1), TOTAL, "bytes count every file, those fetched side by side included");
  }, { repo: { dropAfter: { [SHARD1]: 100_000 } } });
});

Deno.test("hub: a pull fetches files side by side, each over its own connection", async () => {
  // every connection paced to 2 MiB/s, as a CDN paces one: the shards (0.4 and 0.6 MB) at once take
  // about as long as the larger alone
  const pull = async (parallelDownloads: number) => {
    let seconds = 0;
    let peak = 0;
    await withHub(async (hub, cache) => {
      const started = performance.now();
      await pullModel(REPO, { parallelDownloads });
      seconds = (performance.now() - started) / 1000;
      peak = hub.peakPacedBodies;
      for (const f of [SHARD1, SHARD2]) {
        assert.deepEqual(Deno.readFileSync(join(SNAPSHOT(cache), f)), Deno.readFileSync(join(FIXTURE, f)));
      }
    }, { repo: { bytesPerSecond: 2 << 20 } });
    return { seconds, peak };
  };
  const one = await pull(1);
  const four = await pull(4);
  assert.equal(one.peak, 1);
  assert.ok(four.peak >= 2, `at most ${four.peak} at once`);
  assert.ok(
    four.seconds < 0.85 * one.seconds,
    `${four.seconds} s side by side against ${one.seconds} s one by one`,
  );
});

Deno.test("hub: an interrupted pull leaves the partial file in blobs/, and the next pull resumes it", async () => {
  await withHub(async (hub, cache) => {
    const stop = new AbortController();
    await assert.rejects(
      pullModel(REPO, {
        signal: stop.signal,
        retryDelayMs: 10,
        onProgress: (p) =>
          p.file === SHARD1 && p.receivedBytes > 0 && p.bytes > TOTAL - size(SHARD1) - size(SHARD2) &&
          stop.abort(),
      }),
      (e: Error) => e.name === "AbortError",
    );
    const blobs = join(cache, "models--test-org--tiny-mixtral", "blobs");
    const partial = join(blobs, `${blobIdOf(SHARD1)}.incomplete`);
    const onDisk = Deno.statSync(partial).size;
    assert.ok(onDisk > 0 && onDisk < size(SHARD1), `a partial shard: ${onDisk} bytes`);
    assert.ok(!filesIn(SNAPSHOT(cache)).includes(SHARD1), "an unverified file is not in the snapshot");
    assert.ok(!filesIn(blobs).includes(blobIdOf(SHARD1)));

    // what the first pull left: files done (fetched side by side with the shard) and partial blobs
    const linked = filesIn(SNAPSHOT(cache)).filter((f) => ENGINE_FILES.includes(f));
    const partials = filesIn(blobs).filter((f) => f.endsWith(".incomplete"))
      .reduce((a, f) => a + Deno.statSync(join(blobs, f)).size, 0);
    hub.log.length = 0;
    const r = await pullModel(REPO, { retryDelayMs: 10 });
    const cdn = requestsFor(hub, SHARD1).filter((e) => e.server === "cdn");
    assert.deepEqual(cdn.map((e) => [e.status, e.range]), [[206, `bytes=${onDisk}-`]]);
    assert.equal(
      r.downloadedBytes,
      TOTAL - linked.reduce((a, f) => a + size(f), 0) - partials,
      "only what was missing",
    );
    assert.deepEqual(Deno.readFileSync(join(r.dir, SHARD1)), Deno.readFileSync(join(FIXTURE, SHARD1)));
    assert.deepEqual(requestsFor(hub, "config.json"), [], "files already cached are not fetched again");
  }, { repo: { dropAfter: { [SHARD1]: 100_000 } } });
});

Deno.test("hub: a stalled download is abandoned after HF_HUB_DOWNLOAD_TIMEOUT and resumed", async () => {
  await withHub(async (hub) => {
    const r = await pullModel(REPO, { retryDelayMs: 10 });
    const cdn = requestsFor(hub, SHARD2).filter((e) => e.server === "cdn");
    assert.deepEqual(cdn.map((e) => [e.status, e.range]), [[200, undefined], [206, "bytes=50000-"]]);
    assert.equal(r.downloadedBytes, TOTAL);
    assert.deepEqual(Deno.readFileSync(join(r.dir, SHARD2)), Deno.readFileSync(join(FIXTURE, SHARD2)));
  }, { repo: { stallAfter: { [SHARD2]: 50_000 } }, env: { HF_HUB_DOWNLOAD_TIMEOUT: "0.3" } });
});

Deno.test("hub: a server that answers a Range with the whole file: what was on disk is replaced", async () => {
  await withHub(async (hub, cache) => {
    // a partial file of junk from an earlier run
    const blobs = join(cache, "models--test-org--tiny-mixtral", "blobs");
    Deno.mkdirSync(blobs, { recursive: true });
    Deno.writeFileSync(join(blobs, `${blobIdOf(SHARD1)}.incomplete`), new Uint8Array(1000).fill(7));
    const r = await pullModel(REPO, { retryDelayMs: 10 });
    const cdn = requestsFor(hub, SHARD1).filter((e) => e.server === "cdn");
    assert.deepEqual(cdn.map((e) => [e.status, e.range]), [[200, "bytes=1000-"]]);
    assert.deepEqual(Deno.readFileSync(join(r.dir, SHARD1)), Deno.readFileSync(join(FIXTURE, SHARD1)));
  }, { repo: { ignoreRange: true } });
});

Deno.test("hub: two pulls at once fetch each file once (one writer per blob)", async () => {
  await withHub(async (hub, cache) => {
    const [a, b] = await Promise.all([
      pullModel(REPO, { retryDelayMs: 10 }),
      pullModel(REPO, { retryDelayMs: 10 }),
    ]);
    assert.equal(a.dir, SNAPSHOT(cache));
    assert.equal(b.dir, SNAPSHOT(cache));
    assert.equal(a.downloadedBytes + b.downloadedBytes, TOTAL);
    for (const f of ENGINE_FILES) {
      const fetched = requestsFor(hub, f).filter((e) => e.status === 200);
      assert.equal(fetched.length, 1, `${f} fetched once`);
    }
    assert.deepEqual(filesIn(SNAPSHOT(cache)), ENGINE_FILES);
  });
});

Deno.test("hub: a file that fails its checksum is deleted, never linked, and named with both hashes", async () => {
  // an LFS file is checked against lfs.sha256, a git file against its git blob id
  for (const [file, kind] of [[SHARD2, "sha256"], ["tokenizer.json", "git blob sha1"]] as const) {
    await withHub(async (_hub, cache) => {
      const e = await rejectsWith(
        pullModel(REPO, { retryDelayMs: 10 }),
        HubError,
        new RegExp(
          `^Checksum mismatch for ${file} of test-org/tiny-mixtral: the hub lists ${kind} ${
            blobIdOf(file)
          }, the download has [0-9a-f]{40,64}; it was deleted`,
        ),
      );
      assert.equal((e as HubError).status, undefined);
      const blobs = filesIn(join(cache, "models--test-org--tiny-mixtral", "blobs"));
      assert.ok(!blobs.some((b) => b.startsWith(blobIdOf(file))), `no blob nor partial of ${file}: ${blobs}`);
      assert.ok(!filesIn(SNAPSHOT(cache)).includes(file));
      // and the incomplete snapshot is not used in place of the hub
      await rejectsWith(resolveModel(REPO, { offline: true }), HubError, /not in the cache/);
    }, { repo: { corrupt: [file] } });
  }
});

Deno.test("hub: a gated repo answers 401 without a token, 403 without access, and works with HF_TOKEN", async () => {
  const gated = { repo: { token: "hf_secret" } };
  await withHub(async () => {
    const e = await rejectsWith(
      pullModel(REPO),
      HubError,
      /^No access to test-org\/tiny-mixtral: it is gated; accept its terms at http:\/\/127\.0\.0\.1:\d+\/test-org\/tiny-mixtral and set HF_TOKEN/,
    );
    assert.equal((e as HubError).status, 401);
  }, gated);
  await withHub(async () => {
    const e = await rejectsWith(
      pullModel(REPO),
      HubError,
      /gated and HF_TOKEN's account has not been granted/,
    );
    assert.equal((e as HubError).status, 403);
  }, { ...gated, env: { HF_TOKEN: "hf_other" } });
  await withHub(async () => {
    await rejectsWith(pullModel(REPO), HubError, /^The hub refused HF_TOKEN as invalid/);
  }, { ...gated, env: { HF_TOKEN: "hf_invalid" } });
  await withHub(async (_hub, cache) => {
    const r = await pullModel(REPO, { retryDelayMs: 10 });
    assert.deepEqual(filesIn(r.dir), ENGINE_FILES);
    assert.ok(!JSON.stringify(listCachedModels({ cacheDir: cache })).includes("hf_secret"));
  }, { ...gated, env: { HF_TOKEN: "hf_secret" } });
});

Deno.test("hub: a missing file, repository or revision is a HubError that names it", async () => {
  await withHub(async (_hub, cache) => {
    const e = await rejectsWith(
      pullModel(REPO, { retryDelayMs: 10 }),
      HubError,
      /^File not found on the hub: tokenizer\.json of test-org\/tiny-mixtral at 0123456789ab.* \(HTTP 404: Entry not found\)$/,
    );
    assert.equal((e as HubError).status, 404);
    assert.ok(!filesIn(SNAPSHOT(cache)).includes("tokenizer.json"));
  }, { repo: { missing: ["tokenizer.json"] } });
  await withHub(async () => {
    const e = await rejectsWith(
      pullModel("test-org/nope"),
      HubError,
      /^Model not found on the hub: test-org\/nope; check the name .*or set HF_TOKEN if it is private or gated/,
    );
    assert.equal((e as HubError).status, 401, "the hub answers 401 to a missing repo without a token");
    await rejectsWith(
      pullModel(`${REPO}@v9`),
      HubError,
      /^Revision not found: "v9" of test-org\/tiny-mixtral/,
    );
    await rejectsWith(pullModel(REPO, { revision: "v9" }), HubError, /^Revision not found: "v9"/);
    await rejectsWith(
      pullModel(REPO, { revision: "../../x" }),
      OptionError,
      /^Invalid revision: "..\/..\/x"/,
    );
    for (const parallelDownloads of [0, -1, 1.5, NaN]) {
      await rejectsWith(pullModel(REPO, { parallelDownloads }), OptionError, /^Invalid parallelDownloads: /);
    }
  });
});

Deno.test("hub: offline, or with the hub unreachable, the cached copy is used and the caller is told", async () => {
  await withHub(async (hub, cache) => {
    await pullModel(REPO, { retryDelayMs: 10 });
    hub.log.length = 0;

    Deno.env.set("HF_HUB_OFFLINE", "1");
    const offline = await resolveModel(REPO);
    assert.deepEqual([offline.dir, offline.offline, offline.fromCache], [SNAPSHOT(cache), true, true]);
    assert.equal(offline.message, `Offline: using the cached ${REPO}@main (commit 0123456)`);
    await rejectsWith(
      resolveModel("test-org/other"),
      HubError,
      /^Offline, and test-org\/other@main is not in the cache/,
    );
    assert.deepEqual(hub.log, [], "no request offline");
    Deno.env.delete("HF_HUB_OFFLINE");

    // a port nothing listens on: connection refused
    const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (closed.addr as Deno.NetAddr).port;
    closed.close();
    Deno.env.set("HF_ENDPOINT", `http://127.0.0.1:${port}`);
    const fallback = await resolveModel(REPO);
    assert.deepEqual([fallback.dir, fallback.offline, fallback.fromCache], [SNAPSHOT(cache), true, true]);
    assert.match(
      fallback.message ?? "",
      new RegExp(
        `^Cannot reach the hub at http://127\\.0\\.0\\.1:${port}: .*: using the cached ${REPO}@main \\(commit 0123456\\)$`,
      ),
    );
    const e = await rejectsWith(
      resolveModel("test-org/other"),
      HubError,
      /^Cannot reach the hub .*not in the cache/,
    );
    assert.equal((e as HubError).unreachable, true);
  });
});

Deno.test("hub: list shows cached models with sizes and revisions, rm deletes one", async () => {
  await withHub(async (_hub, cache) => {
    assert.deepEqual(listCachedModels(), []);
    await pullModel(REPO, { retryDelayMs: 10 });
    const [m, ...rest] = listCachedModels();
    assert.deepEqual(rest, []);
    assert.equal(m?.repo, REPO);
    assert.equal(m?.bytes, TOTAL);
    assert.equal(m?.incompleteBytes, 0);
    assert.deepEqual(m?.refs, { main: COMMIT });
    assert.deepEqual(m?.snapshots.map((s) => [s.commit, s.complete, s.files]), [[
      COMMIT,
      true,
      ENGINE_FILES,
    ]]);
    const removed = removeCachedModel(REPO);
    assert.equal(removed.bytes, TOTAL);
    assert.deepEqual(filesIn(cache).filter((f) => f.startsWith("models--")), []);
    assert.deepEqual(listCachedModels(), []);
    await rejectsWith(
      Promise.resolve().then(() => removeCachedModel(REPO)),
      HubError,
      /^Not in the cache: test-org\/tiny-mixtral/,
    );
  });
});

/** What huggingface_hub's snapshot_download leaves: blobs by hash, relative symlinks, refs/main. */
function writeForeignCache(cache: string): void {
  const repoDir = join(cache, "models--test-org--tiny-mixtral");
  Deno.mkdirSync(join(repoDir, "blobs"), { recursive: true });
  Deno.mkdirSync(join(repoDir, "refs"));
  Deno.mkdirSync(SNAPSHOT(cache), { recursive: true });
  for (const f of ENGINE_FILES) {
    Deno.copyFileSync(join(FIXTURE, f), join(repoDir, "blobs", blobIdOf(f)));
    Deno.symlinkSync(`../../blobs/${blobIdOf(f)}`, join(SNAPSHOT(cache), f));
  }
  Deno.writeTextFileSync(join(repoDir, "refs", "main"), COMMIT);
}

Deno.test("hub: a cache made by another tool is found without downloading", async () => {
  await withHub(async (hub, cache) => {
    writeForeignCache(cache);
    const r = await resolveModel(REPO);
    assert.deepEqual([r.dir, r.fromCache, r.offline, r.downloadedBytes], [SNAPSHOT(cache), true, false, 0]);
    assert.deepEqual(
      hub.log.map((e) => e.path),
      [`/api/models/${REPO}/revision/main?blobs=true`],
      "the listing only",
    );
    hub.log.length = 0;
    // a commit hash with a complete snapshot needs no request at all
    const pinned = await resolveModel(`${REPO}@${COMMIT}`);
    assert.deepEqual([pinned.dir, pinned.fromCache, pinned.offline], [SNAPSHOT(cache), true, false]);
    assert.deepEqual(hub.log, []);
  });
});

Deno.test("hub: resolveModel returns a local folder as is, and refuses a path that is no hub name", async () => {
  const local = await resolveModel("tests/fixtures/tiny-mixtral");
  assert.deepEqual(local, {
    dir: "tests/fixtures/tiny-mixtral",
    fromCache: false,
    offline: false,
    downloadedBytes: 0,
  });
  await rejectsWith(
    resolveModel("no/such/folder"),
    CheckpointError,
    /^Model folder not found: no\/such\/folder/,
  );
});

// the command line end to end

const cli = (args: string[], env: Record<string, string>) => runMain(args, { env });

Deno.test("hub CLI: pull prints the folder, info --model org/name loads it, list shows it, rm deletes it", async () => {
  await withHub(async (hub, cache) => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache, HF_TOKEN_PATH: join(cache, "none") };
    const pulled = await cli(["pull", REPO], env);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(pulled.stdout, `${SNAPSHOT(cache)}\n`);
    assert.match(pulled.stderr, /^Downloading test-org\/tiny-mixtral \(commit 0123456\): 8 files, /m);
    assert.match(
      pulled.stderr,
      /^Downloaded test-org\/tiny-mixtral@main \(commit 0123456\): [\d.]+ [KM]iB in /m,
    );

    const info = await cli(["info", "--json", "--model", REPO], env);
    assert.equal(info.code, 0, info.stderr);
    const parsed = JSON.parse(info.stdout) as ModelInfo;
    assert.equal(parsed.model, SNAPSHOT(cache));
    assert.equal(parsed.spec.modelType, "mixtral");
    assert.doesNotMatch(info.stderr, /Download/, "nothing downloaded the second time");

    const listed = await cli(["list"], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /^test-org\/tiny-mixtral\s+[\d.]+ [KM]iB\s+main → 0123456$/m);

    const removed = await cli(["rm", REPO], env);
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.stdout, /^Removed test-org\/tiny-mixtral \([\d.]+ [KM]iB\)/);
    const again = await cli(["rm", REPO], env);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^error: Not in the cache: test-org\/tiny-mixtral/);
  });
});

Deno.test("hub CLI: generate --model org/name downloads first, then generates; a gated repo says to set HF_TOKEN", async () => {
  await withHub(async (hub, cache) => {
    const env = { HF_ENDPOINT: hub.endpoint, HF_HUB_CACHE: cache, HF_TOKEN_PATH: join(cache, "none") };
    const denied = await cli(["generate", "--model", REPO, "--max-tokens", "2", "Hi"], env);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^error: No access to test-org\/tiny-mixtral: it is gated; .*set HF_TOKEN/);
    assert.doesNotMatch(denied.stderr, /^\s+at /m, "no stack");

    const r = await cli(["generate", "--model", REPO, "--max-tokens", "2", "--json", "Hi"], {
      ...env,
      HF_TOKEN: "hf_secret",
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { ids: number[] }).ids.length, 2);
    assert.match(r.stderr, /^Downloaded test-org\/tiny-mixtral@main/m);
  }, { repo: { token: "hf_secret" } });
});
