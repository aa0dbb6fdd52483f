/**
 * useDeviceAuthState against the real database through the gateway, with the
 * real `baileys` package (no connection to WhatsApp): a session saved by one
 * server is the session the next holder loads, byte for byte, and the store
 * refuses the server it was taken from.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { after, test } from "node:test";
import {
  type AuthenticationState,
  BufferJSON,
  getNextPreKeys,
  proto,
  type SignalDataSet,
  type SignalDataTypeMap,
} from "baileys";
import { BackendError, type FencedWrite, SessionCipher } from "@device-qr/backend";
import { useDeviceAuthState } from "@device-qr/backend/baileys";
import { randomKey } from "./keys.ts";
import { killServer, pairingDevice, testStack } from "./stack.ts";

const { api, db } = testStack();
after(() => db.end({ timeout: 5 }));

const cipher = await SessionCipher.fromKeyRing(randomKey("k1"));

async function liveServer(name: string): Promise<string> {
  const { serverId } = await api.heartbeat({
    serverName: `${name}-${crypto.randomUUID()}`,
    currentLoad: 0,
    maxCapacity: null,
    metadata: { test: "packages/backend/test/auth_state_test.ts" },
  });
  return serverId;
}

const json = (value: unknown) => JSON.stringify(value, BufferJSON.replacer);
/** BufferJSON of every entry, by type then id: what must survive the handover byte for byte. */
const entries = (set: SignalDataSet) =>
  Object.entries(set).flatMap(([type, values]) =>
    Object.entries(values ?? {}).map(([id, value]) => `${type}/${id} ${json(value)}`)
  ).sort();
const bytes = (n: number) => crypto.getRandomValues(new Uint8Array(n));

/** What a linked session has besides pre-keys: one entry of every kind Baileys stores. */
function linkedKeys(): SignalDataSet {
  return {
    session: { "491701234567.0": bytes(900), "491701234567.1": bytes(850) },
    "sender-key": { "120363000000000000@g.us::491701234567::0": bytes(300) },
    "sender-key-memory": {
      "120363000000000000@g.us": { "491701234567:1@s.whatsapp.net": true },
    },
    "app-state-sync-key": {
      AAAAAOMf: proto.Message.AppStateSyncKeyData.fromObject({
        keyData: bytes(32),
        fingerprint: {
          rawId: 123456,
          currentIndex: 2,
          deviceIndexes: [0, 1, 2],
        },
        timestamp: 1_764_000_000_000,
      }),
    },
    "app-state-sync-version": {
      regular_high: {
        version: 7,
        hash: Buffer.from(bytes(128)),
        indexValueMap: { "bWFjMQ==": { valueMac: bytes(32) } },
      },
    },
    "lid-mapping": { "491701234567": "123456789012345@lid" },
    "device-list": { "491701234567": ["0", "1"] },
    "identity-key": { "491701234567.0": bytes(33) },
  };
}

/** Every entry of `expected`, read back through `state` (one `keys.get` per type). */
async function readBack(state: AuthenticationState, expected: SignalDataSet) {
  const read: SignalDataSet = {};
  for (const [type, values] of Object.entries(expected)) {
    const kind = type as keyof SignalDataTypeMap;
    Object.assign(read, {
      [kind]: await state.keys.get(kind, Object.keys(values ?? {})),
    });
  }
  return read;
}

test("a session saved by server A is loaded by server B after a handover, byte for byte", async () => {
  const serverA = await liveServer("authstate-A");
  const deviceId = await pairingDevice(db, serverA);
  const atA: FencedWrite = { deviceId, serverId: serverA, epoch: 1 };

  // Server A pairs the device: fresh creds, Baileys' own pre-key upload, a linked session.
  const a = await useDeviceAuthState(api, atA, { cipher });
  assert.equal(
    a.state.creds.registered,
    false,
    "a device never linked starts from fresh creds",
  );
  const { update } = await getNextPreKeys(a.state, 30);
  Object.assign(a.state.creds, update, {
    registered: true,
    me: { id: "491701234567:1@s.whatsapp.net", name: "Test" },
    routingInfo: Buffer.from(bytes(24)),
    myAppStateKeyId: "AAAAAOMf",
  });
  await a.saveCreds();
  const keys = linkedKeys();
  await a.state.keys.set(keys);
  await api.reportStatus({ ...atA, status: "connected" });
  const preKeyIds = Object.keys(
    await a.state.keys.get("pre-key", ["1", "15", "30", "31"]),
  );
  assert.deepEqual(
    preKeyIds.sort(),
    ["1", "15", "30"],
    "Baileys wrote pre-keys 1..30",
  );
  const preKeysAtA = await a.state.keys.get(
    "pre-key",
    Array.from({ length: 30 }, (_, i) => `${i + 1}`),
  );

  // A dies; B claims the linked device and resumes it (no QR).
  await killServer(db, serverA);
  const serverB = await liveServer("authstate-B");
  const claimed = (await api.claimDevices(serverB, 10_000)).find((d) => d.deviceId === deviceId);
  assert.ok(claimed, "B did not claim the device whose server died");
  assert.equal(
    claimed.resume,
    true,
    "a linked device is handed over to be resumed",
  );
  assert.ok(claimed.epoch > 1);
  const atB: FencedWrite = {
    deviceId,
    serverId: serverB,
    epoch: claimed.epoch,
  };

  const b = await useDeviceAuthState(api, atB, { cipher });
  assert.equal(
    json(b.state.creds),
    json(a.state.creds),
    "creds differ after the handover",
  );
  assert.deepEqual(
    entries(await readBack(b.state, keys)),
    entries(keys),
    "signal keys differ after the handover",
  );
  assert.ok(
    (await b.state.keys.get("app-state-sync-key", ["AAAAAOMf"]))
      .AAAAAOMf instanceof
      proto.Message.AppStateSyncKeyData,
    "app-state-sync-key is revived as a protobuf object, as Baileys expects",
  );
  assert.deepEqual(
    entries({
      "pre-key": await b.state.keys.get("pre-key", Object.keys(preKeysAtA)),
    }),
    entries({ "pre-key": preKeysAtA }),
  );
  assert.equal(Object.keys(preKeysAtA).length, 30);

  // A, back from a partition, writes late: refused, and B's session is untouched.
  const fenced = (error: unknown) => error instanceof BackendError && error.code === "fenced";
  a.state.creds.registered = false;
  await assert.rejects(a.saveCreds(), fenced);
  await assert.rejects(
    Promise.resolve(a.state.keys.set({ session: { "491701234567.0": null } })),
    fenced,
  );
  await assert.rejects(
    Promise.resolve(a.state.keys.get("session", ["491701234567.0"])),
    fenced,
  );
  const again = await useDeviceAuthState(api, atB, { cipher });
  assert.equal(again.state.creds.registered, true);
  assert.deepEqual(entries(await readBack(again.state, keys)), entries(keys));

  // B writes on: deleting an entry (a null value) deletes it.
  await b.state.keys.set({ "pre-key": { "1": null } });
  assert.deepEqual(Object.keys(await b.state.keys.get("pre-key", ["1", "2"])), [
    "2",
  ]);
});

test("a logged-out device's session is gone, and pairing again starts from fresh creds", async () => {
  const server = await liveServer("authstate-logout");
  const deviceId = await pairingDevice(db, server);
  const holder: FencedWrite = { deviceId, serverId: server, epoch: 1 };
  const linked = await useDeviceAuthState(api, holder, { cipher });
  linked.state.creds.registered = true;
  await linked.saveCreds();
  await linked.state.keys.set(linkedKeys());
  await api.reportStatus({ ...holder, status: "connected" });
  const [{ count: stored }] = await db<{ count: number }[]>`
    select count(*)::int from device_assignment.device_sessions where device_id = ${deviceId}`;
  assert.ok(stored > 1, "nothing was stored");

  // WhatsApp refused the session (the user unlinked it on the phone).
  await api.reportStatus({ ...holder, status: "logged_out" });
  const [{ count: left }] = await db<{ count: number }[]>`
    select count(*)::int from device_assignment.device_sessions where device_id = ${deviceId}`;
  assert.equal(left, 0, "a logged-out session stays in the store");
  await assert.rejects(
    api.writeSession(holder, [{
      type: "creds",
      id: "creds",
      value: "v1.k1.x.y",
    }]),
    (error: unknown) => error instanceof BackendError && error.code === "fenced",
    "a late write brought a logged-out session back",
  );

  // The operator restarts pairing: whoever holds it now reads an empty store.
  const [restart] = await db<{ r: { devices: { to: string }[] } }[]>`
    select public.reassign_devices('device', ${deviceId}) as r`;
  const [row] = await db<{ assignment_epoch: string }[]>`
    select assignment_epoch from public.devices where id = ${deviceId}`;
  const next: FencedWrite = {
    deviceId,
    serverId: restart.r.devices[0].to,
    epoch: Number(row.assignment_epoch),
  };
  assert.deepEqual(await api.readSession(next, "creds", null), {});
  assert.deepEqual(await api.readSession(next, "session", null), {});
  const fresh = await useDeviceAuthState(api, next, { cipher });
  assert.equal(fresh.state.creds.registered, false);
  assert.notEqual(
    json(fresh.state.creds.noiseKey),
    json(linked.state.creds.noiseKey),
  );
});
