import assert from "node:assert/strict";
import { test } from "node:test";
import { type EntryAddress, SessionCipher, SessionCryptoError } from "@device-qr/backend";
import { randomKey } from "./keys.ts";

const here: EntryAddress = {
  deviceId: "11111111-1111-4111-8111-111111111111",
  type: "session",
  id: "a.0",
};
const secret = JSON.stringify({ hello: "world", n: [1, 2, 3] });

function rejectsWith(code: SessionCryptoError["code"]) {
  return (error: unknown) => {
    assert.ok(
      error instanceof SessionCryptoError,
      `expected a SessionCryptoError, got ${error}`,
    );
    assert.equal(error.code, code, error.message);
    return true;
  };
}

test("a sealed value opens with its address and holds no plaintext", async () => {
  const cipher = await SessionCipher.fromKeyRing(randomKey("k1"));
  const sealed = await cipher.encrypt(here, secret);
  assert.ok(
    !sealed.includes("hello"),
    "the stored value carries the plaintext",
  );
  assert.match(sealed, /^v1\.k1\./);
  assert.equal(await cipher.decrypt(here, sealed), secret);
  // A fresh nonce every time: the same value never seals to the same text.
  assert.notEqual(await cipher.encrypt(here, secret), sealed);
});

test("a value moved to another device, type or id does not open", async () => {
  const cipher = await SessionCipher.fromKeyRing(randomKey("k1"));
  const sealed = await cipher.encrypt(here, secret);
  for (
    const elsewhere of [
      { ...here, deviceId: "22222222-2222-4222-8222-222222222222" },
      { ...here, type: "pre-key" },
      { ...here, id: "a.1" },
    ]
  ) {
    await assert.rejects(
      cipher.decrypt(elsewhere, sealed),
      rejectsWith("tampered"),
    );
  }
});

test("an altered value is refused as tampered", async () => {
  const cipher = await SessionCipher.fromKeyRing(randomKey("k1"));
  const sealed = await cipher.encrypt(here, secret);
  const parts = sealed.split(".");
  const body = parts[3];
  // Change one character of the ciphertext to another valid base64url one.
  parts[3] = (body[0] === "A" ? "B" : "A") + body.slice(1);
  await assert.rejects(
    cipher.decrypt(here, parts.join(".")),
    rejectsWith("tampered"),
  );
  await assert.rejects(
    cipher.decrypt(here, "plaintext"),
    rejectsWith("malformed"),
  );
});

test("keys rotate: the new key seals, the old one still opens what it sealed", async () => {
  const k1 = randomKey("k1");
  const before = await SessionCipher.fromKeyRing(k1);
  const old = await before.encrypt(here, secret);

  const rotated = await SessionCipher.fromKeyRing(`${randomKey("k2")},${k1}`);
  assert.equal(rotated.currentKeyId, "k2");
  assert.equal(await rotated.decrypt(here, old), secret);
  const fresh = await rotated.encrypt(here, secret);
  assert.match(fresh, /^v1\.k2\./);
  // A server still on the old ring cannot read what the new key sealed, and says which key it lacks.
  await assert.rejects(before.decrypt(here, fresh), (error: unknown) => {
    rejectsWith("unknown_key")(error);
    assert.match((error as Error).message, /"k2"/);
    return true;
  });
});

test("a different key under the same id is refused, not misread", async () => {
  const sealed = await (await SessionCipher.fromKeyRing(randomKey("k1")))
    .encrypt(here, secret);
  const impostor = await SessionCipher.fromKeyRing(randomKey("k1"));
  await assert.rejects(impostor.decrypt(here, sealed), rejectsWith("tampered"));
});

test("a bad key ring is refused with the reason and without the key", async () => {
  const short = `k1:${btoa("sixteen bytes!!!")}`;
  await assert.rejects(SessionCipher.fromKeyRing(short), (error: unknown) => {
    rejectsWith("invalid_keys")(error);
    assert.match((error as Error).message, /16 bytes/);
    assert.ok(
      !(error as Error).message.includes(btoa("sixteen bytes!!!")),
      "the key is in the message",
    );
    return true;
  });
  const k1 = randomKey("k1");
  await assert.rejects(
    SessionCipher.fromKeyRing(`${k1},${k1}`),
    rejectsWith("invalid_keys"),
  );
  await assert.rejects(
    SessionCipher.fromKeyRing(k1.slice(3)),
    rejectsWith("invalid_keys"),
  );
  await assert.rejects(
    SessionCipher.fromKeyRing("k1:not*base64"),
    rejectsWith("invalid_keys"),
  );
  await assert.rejects(
    SessionCipher.fromKeyRing(" , "),
    rejectsWith("invalid_keys"),
  );
  await assert.rejects(SessionCipher.fromEnv({}), rejectsWith("invalid_keys"));
  const fromEnv = await SessionCipher.fromEnv({ DEVICE_SESSION_KEYS: k1 });
  assert.equal(fromEnv.currentKeyId, "k1");
});
