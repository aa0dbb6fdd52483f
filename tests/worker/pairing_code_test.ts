/**
 * Pairing codes in BackendClient: a pending number in a claim becomes one
 * request to the device handler and one fenced publish, on a fake clock.
 */
import assert from "node:assert/strict";
import {
  type AssignedDevice,
  BackendClient,
  type BackendClientEvent,
  BackendError,
  type DeviceHandler,
  type HeldDevice,
  type PairingCode,
} from "@device-qr/backend";
import { PAIRING_CODE_ALPHABET, SimulatedWhatsApp } from "../../worker/pairing.ts";
import { FakeClock, FakeDatabase } from "./fakes.ts";

const PHONE = "14155550123";

/** A handler that records each code request and answers when the test says so. */
class CodeHandler implements DeviceHandler {
  requests: { deviceId: string; epoch: number; phone: string }[] = [];
  #pending: { resolve: (code: PairingCode) => void; reject: (error: Error) => void }[] = [];
  /** Answer every request at once with a code valid this long, unless null (answer by hand). */
  autoTtlMs: number | null = 60_000;

  constructor(private readonly clock: FakeClock) {}

  start(_device: HeldDevice): void {}
  stop(): void {}

  requestPairingCode(device: HeldDevice, phone: string): Promise<PairingCode> {
    this.requests.push({ deviceId: device.deviceId, epoch: device.epoch, phone });
    const n = this.requests.length;
    if (this.autoTtlMs !== null) {
      return Promise.resolve({
        code: `CODE000${n}`,
        expiresAt: new Date(this.clock.now() + this.autoTtlMs),
      });
    }
    return new Promise((resolve, reject) => this.#pending.push({ resolve, reject }));
  }

  answer(code: string, ttlMs = 60_000): void {
    this.#pending.shift()!.resolve({ code, expiresAt: new Date(this.clock.now() + ttlMs) });
  }

  fail(error: Error): void {
    this.#pending.shift()!.reject(error);
  }
}

function setup() {
  const clock = new FakeClock();
  const db = new FakeDatabase();
  db.now = () => clock.now();
  const handler = new CodeHandler(clock);
  const events: BackendClientEvent[] = [];
  const client = new BackendClient({
    backend: db,
    handler,
    config: { serverName: "server-a" },
    clock,
    onEvent: (event) => events.push(event),
  });
  return { clock, db, handler, events, client };
}

/** Let the client's background request and publish run to their end. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("a pending number gets one code, published fenced; claims while it is fresh ask nothing", async () => {
  const { db, handler, events, client } = setup();
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.deepEqual(handler.requests, [{ deviceId: "d1", epoch: 1, phone: PHONE }]);
  assert.deepEqual(
    db.pairingCodes.map((p) => [p.deviceId, p.epoch, p.code]),
    [["d1", 1, "CODE0001"]],
  );
  for (let i = 0; i < 5; i++) {
    await client.claim();
    await settle();
  }
  assert.equal(handler.requests.length, 1, "a fresh code is not asked for again");
  assert.ok(events.some((e) => e.type === "pairing_code_published" && e.deviceId === "d1"));
  assert.ok(!JSON.stringify(events).includes(PHONE), "the number is in no event");
});

Deno.test("claims that come while the request is on its way do not ask again", async () => {
  const { db, handler, client } = setup();
  handler.autoTtlMs = null;
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  for (let i = 0; i < 4; i++) {
    await client.claim();
    await settle();
  }
  assert.equal(handler.requests.length, 1);
  handler.answer("ABCD1234");
  await settle();
  assert.deepEqual(db.pairingCodes.map((p) => p.code), ["ABCD1234"]);
});

Deno.test("a claim answered before the publish landed does not ask again", async () => {
  const { db, handler, client } = setup();
  handler.autoTtlMs = null;
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  // The second claim's rows are read at once (number pending, no code yet), answered later.
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const claimDevices = db.claimDevices.bind(db);
  let claims = 0;
  db.claimDevices = async (serverId: string, limit: number): Promise<AssignedDevice[]> => {
    const rows = await claimDevices(serverId, limit);
    if (++claims === 2) await gate;
    return rows;
  };
  await client.heartbeat();
  await client.claim();
  const late = client.claim();
  await settle();
  handler.answer("ABCD1234");
  await settle();
  assert.equal(db.pairingCodes.length, 1, "published");
  release();
  await late;
  await settle();
  assert.equal(handler.requests.length, 1, "the late answer still showing the number asks nothing");
});

Deno.test("an expired code, or the owner asking again, gets a new code", async () => {
  const { clock, db, handler, client } = setup();
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  await client.claim();
  await settle();
  clock.advance(59_000);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 1, "still fresh at 59 s");
  clock.advance(2_000);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 2, "expired at 60 s: asked again");
  db.requestPairingCode("d1", PHONE);
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 3, "the owner asked again: a new code");
  assert.deepEqual(db.pairingCodes.map((p) => p.code), ["CODE0001", "CODE0002", "CODE0003"]);
});

Deno.test("a new epoch asks again, and the old holder's late code is fenced", async () => {
  const { db, handler, events, client } = setup();
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  await client.claim();
  await settle();
  // Moved (say by an operator) and handed back to us: a new epoch, a new socket, a new code.
  db.reassign("d1", "server-a");
  await client.claim();
  await settle();
  assert.deepEqual(handler.requests.map((r) => r.epoch), [1, 2]);
  assert.deepEqual(db.pairingCodes.map((p) => p.epoch), [1, 2]);

  // Moved to another server while we ask WhatsApp: our code arrives too late.
  handler.autoTtlMs = null;
  db.reassign("d1", "server-a");
  await client.claim();
  await settle();
  db.reassign("d1", "server-b");
  handler.answer("LATE1234");
  await settle();
  assert.ok(!db.pairingCodes.some((p) => p.code === "LATE1234"), "the late code is refused");
  assert.ok(
    events.some((e) => e.type === "pairing_code_rejected" && e.code === "fenced" && e.epoch === 3),
  );
  assert.ok(events.some((e) => e.type === "session_dropped" && e.reason === "fenced"));
  assert.deepEqual(client.deviceIds, [], "the device is dropped like after any fenced write");
});

Deno.test("a failed request is retried only after pairingRetryMs; the error hides the number", async () => {
  const { clock, db, handler, events, client } = setup();
  handler.autoTtlMs = null;
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  await client.claim();
  await settle();
  handler.fail(new Error(`rate-overlimit for ${PHONE}`));
  await settle();
  const failed = events.find((e) => e.type === "pairing_code_failed");
  assert.ok(failed && failed.type === "pairing_code_failed");
  assert.equal(failed.error, "rate-overlimit for <phone>");
  clock.advance(29_000);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 1, "not before 30 s");
  clock.advance(1_000);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 2);
  assert.ok(!JSON.stringify(events).includes(PHONE), "the number is in no event");
});

Deno.test("a publish that got no answer is sent again with the same code, WhatsApp is not asked again", async () => {
  const { db, handler, client } = setup();
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  const publish = db.publishPairingCode.bind(db);
  let attempts = 0;
  db.publishPairingCode = (write) => {
    if (++attempts === 1) throw new BackendError("unavailable", "timeout");
    return publish(write);
  };
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(db.pairingCodes.length, 0);
  await client.claim();
  await settle();
  assert.equal(handler.requests.length, 1);
  assert.deepEqual(db.pairingCodes.map((p) => p.code), ["CODE0001"]);
});

Deno.test("a handler without requestPairingCode is told once; nothing is published", async () => {
  const clock = new FakeClock();
  const db = new FakeDatabase();
  const events: BackendClientEvent[] = [];
  const client = new BackendClient({
    backend: db,
    handler: { start() {}, stop() {} },
    config: { serverName: "server-a" },
    clock,
    onEvent: (event) => events.push(event),
  });
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  for (let i = 0; i < 3; i++) {
    await client.claim();
    await settle();
  }
  assert.equal(events.filter((e) => e.type === "pairing_code_failed").length, 1);
  assert.equal(db.pairingCodes.length, 0);
});

Deno.test("the simulator's code, typed on the phone, links the device like a scan", async () => {
  const clock = new FakeClock();
  const db = new FakeDatabase();
  db.now = () => clock.now();
  const whatsapp = new SimulatedWhatsApp(db, {}, clock);
  const client = new BackendClient({
    backend: db,
    handler: whatsapp,
    config: { serverName: "server-a" },
    clock,
  });
  db.addDevice("d1", "server-a");
  db.requestPairingCode("d1", PHONE);
  const start = clock.now();
  await client.heartbeat();
  await client.claim();
  await settle();
  const [published] = db.pairingCodes;
  assert.ok(published, "a code was published");
  assert.equal(published.code.length, 8);
  for (const char of published.code) assert.ok(PAIRING_CODE_ALPHABET.includes(char), char);
  const ttl = published.expiresAt.getTime() - start;
  assert.ok(ttl > 100_000 && ttl <= 120_500, `valid for about two minutes, got ${ttl} ms`);

  assert.equal(await whatsapp.enterCode("d1", "ZZZZ-ZZZZ"), false, "a wrong code links nothing");
  const shown = `${published.code.slice(0, 4)}-${published.code.slice(4).toLowerCase()}`;
  assert.equal(await whatsapp.enterCode("d1", shown), true, "typed as shown, any case");
  const device = db.devices.get("d1")!;
  assert.equal(device.status, "connected");
  assert.ok(db.sessions.get("d1")?.has("creds\u0000creds"), "creds stored before connected");
  assert.equal(device.pairingPhone, null, "the number is gone once linked");
  assert.equal(await whatsapp.enterCode("d1", published.code), false, "used up");
});

Deno.test("the simulator's code expires with the pairing attempt", async () => {
  const clock = new FakeClock();
  const db = new FakeDatabase();
  db.now = () => clock.now();
  const whatsapp = new SimulatedWhatsApp(db, { pairingCodeMs: 0 }, clock);
  const client = new BackendClient({
    backend: db,
    handler: whatsapp,
    config: { serverName: "server-a" },
    clock,
  });
  db.addDevice("d1", "server-a");
  await client.heartbeat();
  const start = clock.now();
  await client.claim();
  // 150 s into the 160.5 s attempt (first QR after 0.5 s, then 60 + 5 × 20 s).
  clock.advance(150_000);
  db.requestPairingCode("d1", PHONE);
  await client.heartbeat();
  await client.claim();
  await settle();
  assert.equal(db.pairingCodes[0].expiresAt.getTime() - start, 160_500);
  clock.advance(10_500);
  assert.equal(await whatsapp.enterCode("d1", db.pairingCodes[0].code), false, "expired");
});
