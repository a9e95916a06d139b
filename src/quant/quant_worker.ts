/**
 * A worker that quantizes experts for src/quant/store.ts: it receives one expert's bf16 matrices and
 * answers with its copy at the asked precision (the matrices' layouts back to back).
 *
 * @module
 */
import { matrixLayout, type Precision, quantizeMatrix } from "./formats.ts";

interface Job {
  i: number;
  precision: Precision;
  matrices: { rows: number; cols: number; bf16: Uint8Array<ArrayBuffer> }[];
}

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<Job>) => void) | null;
  postMessage(message: unknown, transfer: Transferable[]): void;
};

scope.onmessage = (ev) => {
  const { i, precision, matrices } = ev.data;
  const sizes = matrices.map((m) => matrixLayout(precision, m.rows, m.cols).bytes);
  const copy = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
  let at = 0;
  matrices.forEach((m, k) => {
    copy.set(quantizeMatrix(precision, m.bf16, m.rows, m.cols), at);
    at += sizes[k]!;
  });
  scope.postMessage({ i, copy }, [copy.buffer]);
};
