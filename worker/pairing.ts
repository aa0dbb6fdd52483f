/**
 * WhatsApp multi-device pairing as a linked device sees it: the first QR is
 * valid for 60 s, then WhatsApp hands out a fresh reference every 20 s, six in
 * all, after which the attempt ends (Baileys closes it with "QR refs attempts
 * ended"). The numbers are configurable so tests can run the schedule fast.
 */
export interface PairingSchedule {
  firstQrTtlMs: number;
  rotationMs: number;
  maxQrs: number;
  /** Time from taking a device to its first QR (opening the socket, the handshake). */
  qrGenerationMs: number;
}

export const WHATSAPP_PAIRING: PairingSchedule = {
  firstQrTtlMs: 60_000,
  rotationMs: 20_000,
  maxQrs: 6,
  qrGenerationMs: 500,
};

/** How long QR number `index` (0-based) stays valid. */
export function qrTtlMs(schedule: PairingSchedule, index: number): number {
  return index === 0 ? schedule.firstQrTtlMs : schedule.rotationMs;
}

/**
 * When each QR of one pairing attempt is shown, relative to the moment the
 * device was taken, and when the attempt times out.
 */
export function pairingTimeline(schedule: PairingSchedule): {
  qrs: { index: number; shownAtMs: number; expiresAtMs: number }[];
  timeoutAtMs: number;
} {
  const qrs = [];
  let at = schedule.qrGenerationMs;
  for (let index = 0; index < schedule.maxQrs; index++) {
    const expiresAt = at + qrTtlMs(schedule, index);
    qrs.push({ index, shownAtMs: at, expiresAtMs: expiresAt });
    at = expiresAt;
  }
  return { qrs, timeoutAtMs: at };
}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function randomBytes(length: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(length));
}

/**
 * The long-lived keys of one linked device. A real client keeps them across QR
 * rotations; only the server reference changes.
 */
export interface PairingKeys {
  noisePublicKey: string;
  identityPublicKey: string;
  advSecret: string;
}

export function newPairingKeys(): PairingKeys {
  return {
    noisePublicKey: base64(randomBytes(32)),
    identityPublicKey: base64(randomBytes(32)),
    advSecret: base64(randomBytes(32)),
  };
}

/**
 * A QR payload shaped like WhatsApp's: `<ref>,<noise key>,<identity key>,<adv secret>`
 * where the reference WhatsApp sends starts with `2@`.
 */
export function whatsappQrPayload(keys: PairingKeys): string {
  const ref = `2@${base64(randomBytes(66))}`;
  return [ref, keys.noisePublicKey, keys.identityPublicKey, keys.advSecret].join(",");
}
