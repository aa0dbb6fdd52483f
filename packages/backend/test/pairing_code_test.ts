/**
 * The pairing-code calls of `supabaseBackend` against the real database:
 * `claimDevices` carries the owner's pending number, `publishPairingCode`
 * writes the code fenced and makes the number disappear from the next claim.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { BackendError } from "@device-qr/backend";
import { pairingDevice, testStack } from "./stack.ts";

const { api, db } = testStack();
after(() => db.end({ timeout: 5 }));

/** A call as the device's owner, with their JWT claims, as `get-device-qr` makes it. */
async function asOwner<T>(
  deviceId: string,
  call: (tx: typeof db) => Promise<T>,
): Promise<T> {
  const [{ user_id: userId }] = await db<{ user_id: string }[]>`
    select user_id from public.devices where id = ${deviceId}`;
  return await db.begin(async (tx) => {
    await tx`select set_config('request.jwt.claims', ${
      JSON.stringify({ sub: userId, role: "authenticated" })
    }, true)`;
    await tx`set local role authenticated`;
    return await call(tx as unknown as typeof db);
  }) as T;
}

test("a claim carries the pending number until a code is published, fenced", async () => {
  const { serverId } = await api.heartbeat({
    serverName: `pairing-code-${crypto.randomUUID()}`,
    currentLoad: 0,
    maxCapacity: 100,
    metadata: {},
  });
  const deviceId = await pairingDevice(db, serverId);
  const mine = async () =>
    (await api.claimDevices(serverId, 100)).find((d) => d.deviceId === deviceId)!;

  assert.equal((await mine()).pairingPhone, null, "no request: nothing to do");
  await asOwner(
    deviceId,
    (tx) => tx`select public.request_pairing_code(${deviceId}, '+14155550123')`,
  );
  const claimed = await mine();
  assert.equal(claimed.pairingPhone, "14155550123", "E.164 digits, no +");

  const expiresAt = new Date(Date.now() + 120_000);
  await assert.rejects(
    api.publishPairingCode({
      deviceId,
      serverId,
      epoch: claimed.epoch + 1,
      code: "ABCD1234",
      expiresAt,
    }),
    (error) => error instanceof BackendError && error.code === "fenced",
  );
  await api.publishPairingCode({
    deviceId,
    serverId,
    epoch: claimed.epoch,
    code: "ABCD1234",
    expiresAt,
  });
  assert.equal(
    (await mine()).pairingPhone,
    null,
    "a fresh code is there: nothing to do",
  );
  const [{ qr }] = await asOwner(
    deviceId,
    (tx) =>
      tx<{ qr: { pairing_code: { code: string } | null } }[]>`
      select public.get_device_qr(${deviceId}) as qr`,
  );
  assert.equal(
    qr.pairing_code?.code,
    "ABCD1234",
    "the owner is served the code",
  );
});

test("publishing with no request pending is no_pairing_request", async () => {
  const { serverId } = await api.heartbeat({
    serverName: `pairing-code-${crypto.randomUUID()}`,
    currentLoad: 0,
    maxCapacity: 100,
    metadata: {},
  });
  const deviceId = await pairingDevice(db, serverId);
  await assert.rejects(
    api.publishPairingCode({
      deviceId,
      serverId,
      epoch: 1,
      code: "ABCD1234",
      expiresAt: new Date(Date.now() + 60_000),
    }),
    (error) => error instanceof BackendError && error.code === "no_pairing_request",
  );
});
