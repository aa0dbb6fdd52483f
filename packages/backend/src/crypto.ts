/**
 * Encryption of stored session values. A WhatsApp session is the device's
 * identity: whoever reads the store can impersonate it, so the database only
 * ever holds ciphertext, and the keys live in the servers' environment.
 *
 * AES-256-GCM through Web Crypto (`globalThis.crypto.subtle`), the same code on
 * Node >= 20 and Deno. Each stored value names the key that sealed it, so keys
 * rotate: the first key of the ring encrypts, every key decrypts. The
 * additional data binds the device, type and id, so a value copied to another
 * entry or another device fails to decrypt instead of being believed.
 */
import process from "node:process";

/** The environment variable that holds the key ring: `"k2:<base64 32 bytes>,k1:<…>"`, current first. */
export const SESSION_KEYS_ENV = "DEVICE_SESSION_KEYS";

export type SessionCryptoErrorCode =
  /** The key ring is missing or malformed (bad key id, bad base64, not 32 bytes, duplicate id). */
  | "invalid_keys"
  /** The value was sealed with a key id this server's ring does not hold. */
  | "unknown_key"
  /** Authentication failed: altered, or moved from another entry or device, or a different key under the same id. */
  | "tampered"
  /** Not a value this module wrote. */
  | "malformed";

export class SessionCryptoError extends Error {
  constructor(readonly code: SessionCryptoErrorCode, message: string) {
    super(message);
    this.name = "SessionCryptoError";
  }
}

/** Where a value is stored: what the additional data binds it to. */
export interface EntryAddress {
  deviceId: string;
  type: string;
  id: string;
}

const FORMAT = "v1";
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/;
const IV_BYTES = 12; // the GCM nonce size NIST SP 800-38D recommends

export class SessionCipher {
  readonly #keys: Map<string, CryptoKey>;
  readonly currentKeyId: string;

  private constructor(keys: Map<string, CryptoKey>, currentKeyId: string) {
    this.#keys = keys;
    this.currentKeyId = currentKeyId;
  }

  /**
   * The ring from `DEVICE_SESSION_KEYS` (or `env[SESSION_KEYS_ENV]`). Make a key
   * with `openssl rand -base64 32`; rotate by putting a new one first and
   * keeping the old ones until every session has been rewritten.
   */
  static fromEnv(
    env: Record<string, string | undefined> = process.env,
  ): Promise<SessionCipher> {
    const ring = env[SESSION_KEYS_ENV];
    if (!ring) {
      return Promise.reject(
        new SessionCryptoError(
          "invalid_keys",
          `${SESSION_KEYS_ENV} is not set: give it "<key id>:<base64 of 32 random bytes>" ` +
            "(e.g. k1:$(openssl rand -base64 32)), the current key first",
        ),
      );
    }
    return SessionCipher.fromKeyRing(ring);
  }

  /** The ring as `"kid:base64,kid:base64"`, current key first. */
  static async fromKeyRing(ring: string): Promise<SessionCipher> {
    const keys = new Map<string, CryptoKey>();
    const parts = ring.split(",").map((part) => part.trim()).filter((part) => part !== "");
    if (parts.length === 0) {
      throw new SessionCryptoError(
        "invalid_keys",
        `${SESSION_KEYS_ENV} holds no key`,
      );
    }
    for (const [index, part] of parts.entries()) {
      const colon = part.indexOf(":");
      const keyId = colon < 0 ? "" : part.slice(0, colon);
      // The key material never enters a message: only its id and position.
      if (!KEY_ID.test(keyId)) {
        throw new SessionCryptoError(
          "invalid_keys",
          `key ${
            index + 1
          } of ${SESSION_KEYS_ENV} needs an id of 1 to 32 letters, digits, _ or - ` +
            `before a colon ("k1:<base64>")`,
        );
      }
      if (keys.has(keyId)) {
        throw new SessionCryptoError(
          "invalid_keys",
          `key id "${keyId}" appears twice`,
        );
      }
      let raw: Uint8Array;
      try {
        raw = fromBase64(part.slice(colon + 1));
      } catch {
        throw new SessionCryptoError(
          "invalid_keys",
          `key "${keyId}" is not valid base64`,
        );
      }
      if (raw.length !== 32) {
        throw new SessionCryptoError(
          "invalid_keys",
          `key "${keyId}" is ${raw.length} bytes; AES-256 needs exactly 32`,
        );
      }
      // Only the current key may seal; older ones stay for reading what they sealed.
      const usages: KeyUsage[] = index === 0 ? ["encrypt", "decrypt"] : ["decrypt"];
      keys.set(
        keyId,
        await crypto.subtle.importKey(
          "raw",
          raw as BufferSource,
          "AES-GCM",
          false,
          usages,
        ),
      );
    }
    return new SessionCipher(keys, parts[0].slice(0, parts[0].indexOf(":")));
  }

  /** `v1.<key id>.<iv>.<ciphertext and tag>` (base64url), sealed with the current key. */
  async encrypt(address: EntryAddress, plaintext: string): Promise<string> {
    const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
    const sealed = await crypto.subtle.encrypt(
      {
        name: "AES-GCM",
        iv,
        additionalData: additionalData(this.currentKeyId, address),
      },
      this.#keys.get(this.currentKeyId)!,
      new TextEncoder().encode(plaintext),
    );
    return [
      FORMAT,
      this.currentKeyId,
      toBase64Url(iv),
      toBase64Url(new Uint8Array(sealed)),
    ]
      .join(".");
  }

  async decrypt(address: EntryAddress, stored: string): Promise<string> {
    const parts = stored.split(".");
    if (parts.length !== 4 || parts[0] !== FORMAT) {
      throw new SessionCryptoError(
        "malformed",
        `the ${address.type} entry "${address.id}" is not a ${FORMAT} sealed value`,
      );
    }
    const [, keyId, ivText, sealedText] = parts;
    const key = this.#keys.get(keyId);
    if (!key) {
      throw new SessionCryptoError(
        "unknown_key",
        `the ${address.type} entry "${address.id}" was sealed with key "${keyId}", which ` +
          `${SESSION_KEYS_ENV} does not hold (add it after the current key)`,
      );
    }
    let iv: Uint8Array;
    let sealed: Uint8Array;
    try {
      iv = fromBase64(ivText);
      sealed = fromBase64(sealedText);
    } catch {
      throw new SessionCryptoError(
        "malformed",
        `the ${address.type} entry "${address.id}" is not valid base64`,
      );
    }
    let plain: ArrayBuffer;
    try {
      plain = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: iv as BufferSource,
          additionalData: additionalData(keyId, address),
        },
        key,
        sealed as BufferSource,
      );
    } catch {
      throw new SessionCryptoError(
        "tampered",
        `the ${address.type} entry "${address.id}" failed authentication: altered, written for ` +
          `another entry or device, or key "${keyId}" is not the key that sealed it`,
      );
    }
    return new TextDecoder().decode(plain);
  }
}

/** JSON of a tuple, so no choice of ids can make two addresses encode alike. */
function additionalData(
  keyId: string,
  address: EntryAddress,
): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(
    JSON.stringify([FORMAT, keyId, address.deviceId, address.type, address.id]),
  );
}

// Web-standard base64 (atob/btoa) rather than Node's Buffer, so Deno runs this unchanged.
function toBase64Url(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(
    /=+$/,
    "",
  );
}

/** Standard or url-safe base64, padded or not; throws on anything else. */
function fromBase64(text: string): Uint8Array {
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(text)) throw new Error("not base64");
  const binary = atob(
    text.replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, ""),
  );
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}
