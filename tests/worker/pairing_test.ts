import assert from "node:assert/strict";
import {
  formatPairingCode,
  newPairingKeys,
  PAIRING_CODE_ALPHABET,
  pairingTimeline,
  WHATSAPP_PAIRING,
  whatsappPairingCode,
  whatsappQrPayload,
} from "../../worker/pairing.ts";

Deno.test("WhatsApp pairing shows six QRs: the first for 60 s, then one every 20 s", () => {
  const timeline = pairingTimeline({ ...WHATSAPP_PAIRING, qrGenerationMs: 0 });
  assert.deepEqual(
    timeline.qrs.map((qr) => [qr.shownAtMs, qr.expiresAtMs]),
    [[0, 60_000], [60_000, 80_000], [80_000, 100_000], [100_000, 120_000], [120_000, 140_000], [
      140_000,
      160_000,
    ]],
  );
  assert.equal(timeline.timeoutAtMs, 160_000);
});

Deno.test("a QR payload has WhatsApp's shape: a 2@ reference and three base64 keys", () => {
  const keys = newPairingKeys();
  const payload = whatsappQrPayload(keys);
  const parts = payload.split(",");
  assert.equal(parts.length, 4);
  assert.match(parts[0], /^2@[A-Za-z0-9+/]+=*$/);
  for (const key of parts.slice(1)) {
    assert.equal(atob(key).length, 32);
  }
});

Deno.test("a rotated QR keeps the device keys and changes only the reference", () => {
  const keys = newPairingKeys();
  const [refA, ...keysA] = whatsappQrPayload(keys).split(",");
  const [refB, ...keysB] = whatsappQrPayload(keys).split(",");
  assert.notEqual(refA, refB);
  assert.deepEqual(keysA, keysB);
});

Deno.test("a pairing code is 8 characters of Baileys' alphabet, shown as ABCD-EFGH", () => {
  const codes = Array.from({ length: 500 }, whatsappPairingCode);
  for (const code of codes) assert.match(code, /^[1-9A-HJ-NP-TV-Z]{8}$/);
  assert.ok(new Set(codes).size > 495, "random, not repeated");
  const used = new Set(codes.join(""));
  assert.equal(used.size, PAIRING_CODE_ALPHABET.length, "every character of the alphabet occurs");
  assert.equal(formatPairingCode("ABCD1234"), "ABCD-1234");
});
