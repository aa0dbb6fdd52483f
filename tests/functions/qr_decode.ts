/** Reads a QR code back out of PNG bytes, so tests check what a phone camera would see. */
import { Buffer } from "node:buffer";
import jsqr from "jsqr";
import { PNG } from "pngjs";

// jsqr is a CommonJS bundle whose typings declare an ES default export; at
// runtime the default import already is the function.
const jsQR = jsqr as unknown as (typeof jsqr)["default"];

export function decodeQrPng(bytes: Uint8Array): string | null {
  const png = PNG.sync.read(Buffer.from(bytes));
  return jsQR(new Uint8ClampedArray(png.data), png.width, png.height)?.data ?? null;
}
