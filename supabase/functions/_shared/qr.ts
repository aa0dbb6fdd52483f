/**
 * QR images for a stored QR value. A frontend polls every second or two while
 * a user holds up their phone, and the value changes only every ~20 s, so
 * images are cached by value in a small LRU: a poll costs a map lookup, not a
 * render. Older backends stored a finished `data:image/png;base64,...` URL
 * instead of the raw payload; that image is served as it is.
 */
import QRCode from "qrcode";

export type QrFormat = "png" | "svg";

export interface QrImages {
  png(value: string): Promise<Uint8Array>;
  svg(value: string): Promise<string>;
  /** The PNG as a `data:image/png;base64,` URL, for `qr.image` in JSON. */
  dataUrl(value: string): Promise<string>;
}

const LEGACY_PNG_PREFIX = "data:image/png;base64,";

export function isLegacyPngDataUrl(value: string): boolean {
  return value.startsWith(LEGACY_PNG_PREFIX);
}

const RENDER_OPTIONS = { errorCorrectionLevel: "M", margin: 2, width: 320 } as const;

/** Least-recently-used map: a Map iterates in insertion order, so re-inserting on read keeps it LRU. */
export class LruCache<V> {
  readonly #entries = new Map<string, V>();
  readonly #capacity: number;

  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: string): V | undefined {
    const value = this.#entries.get(key);
    if (value !== undefined) {
      this.#entries.delete(key);
      this.#entries.set(key, value);
    }
    return value;
  }

  set(key: string, value: V): void {
    this.#entries.delete(key);
    this.#entries.set(key, value);
    if (this.#entries.size > this.#capacity) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
  }

  delete(key: string): void {
    this.#entries.delete(key);
  }
}

export interface QrRendererStats {
  renders: number;
  /** PNGs base64-encoded into data URLs; JSON polls of one value share one. */
  encodes: number;
}

/**
 * Renders with `qrcode` and caches the promise, so concurrent polls for the
 * same new value share one render.
 */
export class CachedQrImages implements QrImages {
  readonly #cache: LruCache<Promise<Uint8Array | string>>;
  readonly stats: QrRendererStats = { renders: 0, encodes: 0 };

  constructor(capacity = 512) {
    this.#cache = new LruCache(capacity);
  }

  png(value: string): Promise<Uint8Array> {
    return this.#cached(`png:${value}`, () => {
      if (isLegacyPngDataUrl(value)) {
        return Promise.resolve(decodeBase64(value.slice(LEGACY_PNG_PREFIX.length)));
      }
      return QRCode.toBuffer(value, { ...RENDER_OPTIONS, type: "png" }).then(
        (buffer: Uint8Array) => new Uint8Array(buffer),
      );
    }) as Promise<Uint8Array>;
  }

  svg(value: string): Promise<string> {
    return this.#cached(`svg:${value}`, async () => {
      if (isLegacyPngDataUrl(value)) return svgWrappingPng(value, await this.png(value));
      return QRCode.toString(value, { ...RENDER_OPTIONS, type: "svg" });
    }) as Promise<string>;
  }

  dataUrl(value: string): Promise<string> {
    if (isLegacyPngDataUrl(value)) return Promise.resolve(value);
    // Cached too: every JSON poll carries the image, and re-encoding it each time is garbage.
    const key = `dataurl:${value}`;
    const hit = this.#cache.get(key);
    if (hit) return hit as Promise<string>;
    this.stats.encodes++;
    const encoding = this.png(value).then((png) => LEGACY_PNG_PREFIX + encodeBase64(png));
    this.#cache.set(key, encoding);
    encoding.catch(() => this.#cache.delete(key));
    return encoding;
  }

  #cached(key: string, render: () => Promise<Uint8Array | string>): Promise<Uint8Array | string> {
    const hit = this.#cache.get(key);
    if (hit) return hit;
    this.stats.renders++;
    const rendering = render();
    this.#cache.set(key, rendering);
    rendering.catch(() => this.#cache.delete(key));
    return rendering;
  }
}

/**
 * A legacy value is a finished bitmap, not a payload that could be drawn as
 * vectors, so its SVG embeds the PNG at its own size.
 */
function svgWrappingPng(dataUrl: string, png: Uint8Array): string {
  const { width, height } = pngSize(png);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}"><image width="${width}" height="${height}" ` +
    `href="${dataUrl}"/></svg>`;
}

/** Width and height from the IHDR chunk, which the PNG format puts first. */
function pngSize(png: Uint8Array): { width: number; height: number } {
  if (png.byteLength < 24) return { width: 320, height: 320 };
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

function decodeBase64(base64: string): Uint8Array {
  const binary = atob(base64.trim());
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function encodeBase64(bytes: Uint8Array): string {
  let binary = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    binary += String.fromCharCode(...bytes.subarray(i, i + step));
  }
  return btoa(binary);
}
