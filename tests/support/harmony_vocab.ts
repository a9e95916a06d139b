/**
 * A stand-in tokenizer for harmony's output format (src/text/harmony.ts): its markers and one token per
 * word, decoded by joining the words with spaces; `ids` turns a harmony string into its ids.
 *
 * @module
 */
/** A vocabulary of harmony's markers and one token per word, decoded by joining the words with spaces. */
const MARKERS = [
  "<|start|>",
  "<|channel|>",
  "<|message|>",
  "<|end|>",
  "<|return|>",
  "<|call|>",
  "<|constrain|>",
];
const WORDS = [
  "assistant",
  "analysis",
  "final",
  "commentary",
  "to=functions.weather",
  "json",
  "The",
  "user",
  "asks",
  "Hello",
  "there",
  "{}",
];
const VOCAB = [...MARKERS, ...WORDS];
const id = (t: string) => {
  const i = VOCAB.indexOf(t);
  if (i < 0) throw new Error(`not in the test vocabulary: ${t}`);
  return i;
};
export const ids = (s: string) => s.split(/(<\|[a-z]+\|>)| /).filter((t) => t).map(id);
const decodeWords = (xs: ArrayLike<number>) =>
  Array.from(xs).filter((i) => i >= MARKERS.length).map((i) => VOCAB[i]).join(" ");
export const tokenizer = {
  tokenToId: (t: string) => (VOCAB.includes(t) ? VOCAB.indexOf(t) : undefined),
  decode: decodeWords,
  createStreamDecoder: () => {
    let n = 0;
    return {
      push: (xs: number[]) => {
        const text = xs.map((i) => (n++ > 0 ? " " : "") + VOCAB[i]).join("");
        return text;
      },
      flush: () => "",
    };
  },
};
