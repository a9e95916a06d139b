/**
 * What the kernel tests do after recording: run dispatches in one compute pass, then read a buffer back.
 *
 * @module
 */
import { type CallShape, type Dispatch, encode } from "../../src/gpu/dispatch.ts";

/** Runs `dispatches` at `shape` in one pass, then returns the first `bytes` of `buffer` (all of it by default). */
export async function runAndRead(
  device: GPUDevice,
  dispatches: readonly Dispatch[],
  shape: CallShape,
  buffer: GPUBuffer,
  bytes = buffer.size,
): Promise<ArrayBuffer> {
  const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  encode(pass, dispatches, shape);
  pass.end();
  enc.copyBufferToBuffer(buffer, 0, read, 0, bytes);
  device.queue.submit([enc.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const out = read.getMappedRange().slice(0);
  read.destroy();
  return out;
}
