/**
 * useDeviceAuthState over the in-memory store (fakes.ts): how many store calls
 * Baileys' writes cost, and the fence seen from the package. The same against
 * the real database: packages/backend/test/auth_state_test.ts.
 */
import assert from "node:assert/strict";
import { getNextPreKeys } from "baileys";
import { BackendError, SessionCipher } from "@device-qr/backend";
import { useDeviceAuthState } from "@device-qr/backend/baileys";
import { randomKey } from "../../packages/backend/test/keys.ts";
import { FakeDatabase } from "./fakes.ts";

const cipher = await SessionCipher.fromKeyRing(randomKey("k1"));

function linkedDevice() {
  const db = new FakeDatabase();
  const device = db.addDevice("device-1", "server-a");
  device.status = "connected";
  return {
    db,
    holder: { deviceId: device.id, serverId: "server-a", epoch: device.epoch },
  };
}

Deno.test("one keys.set is one store write holding every entry; saveCreds writes one", async () => {
  const { db, holder } = linkedDevice();
  const { state, saveCreds } = await useDeviceAuthState(db, holder, { cipher });
  db.calls = [];
  await getNextPreKeys(state, 30);
  await state.keys.set({
    session: { "a.0": new Uint8Array([1]), "b.0": null },
  });
  await saveCreds();
  assert.deepEqual(
    db.calls.filter((c) => c === "device_session_write").length,
    3,
  );
  const stored = [...db.sessions.get(holder.deviceId)!.keys()];
  assert.equal(
    stored.filter((key) => key.startsWith("pre-key\u0000")).length,
    30,
  );
  assert.ok(stored.includes("creds\u0000creds"));
  assert.ok(stored.includes("session\u0000a.0"));
  // Values are sealed before they leave the process.
  assert.ok(
    [...db.sessions.get(holder.deviceId)!.values()].every((v) => v.startsWith("v1.k1.")),
  );
});

Deno.test("writes of one state reach the store in call order", async () => {
  const { db, holder } = linkedDevice();
  const { state } = await useDeviceAuthState(db, holder, { cipher });
  // Not awaited in between: Baileys fires writes from concurrent event handlers.
  const writes = [1, 2, 3, 4, 5].map((n) =>
    state.keys.set({
      "sender-key-memory": { group: { [`member-${n}`]: true } },
    })
  );
  await Promise.all(writes);
  const last = await state.keys.get("sender-key-memory", ["group"]);
  assert.deepEqual(last.group, { "member-5": true });
});

Deno.test("a server whose device moved on reads and writes nothing: fenced", async () => {
  const { db, holder } = linkedDevice();
  const { state, saveCreds } = await useDeviceAuthState(db, holder, { cipher });
  await saveCreds();
  db.reassign(holder.deviceId, "server-b");
  const fenced = (error: unknown) => error instanceof BackendError && error.code === "fenced";
  await assert.rejects(saveCreds(), fenced);
  await assert.rejects(
    Promise.resolve(state.keys.get("session", ["a.0"])),
    fenced,
  );
});
