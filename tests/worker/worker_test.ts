import assert from "node:assert/strict";
import {
  BackendClient,
  type BackendClientConfig,
  type BackendClientEvent,
  BackendError,
  CLAIM_AFTER_EXPIRY_MS,
} from "@device-qr/backend";
import { SimulatedWhatsApp } from "../../worker/pairing.ts";
import { FakeClock, FakeDatabase } from "./fakes.ts";

const FAST_PAIRING = {
  firstQrTtlMs: 60_000,
  rotationMs: 20_000,
  maxQrs: 6,
  qrGenerationMs: 500,
};

/** A BackendClient with simulated WhatsApp sockets as its handler, on a fake clock and database. */
function setup(config: Partial<BackendClientConfig> = {}) {
  const clock = new FakeClock();
  const db = new FakeDatabase();
  const events: BackendClientEvent[] = [];
  const whatsapp = new SimulatedWhatsApp(db, {
    pairing: FAST_PAIRING,
    resumeMs: 300,
  }, clock);
  const worker = new BackendClient({
    backend: db,
    handler: whatsapp,
    config: { serverName: "server-a", ...config },
    clock,
    onEvent: (event) => events.push(event),
  });
  /** One tick of `run`: the client checks its lease, the sockets do what is due. */
  const work = async () => {
    worker.enforceLease();
    await whatsapp.work();
  };
  /** Advance the fake clock in steps, ticking after each. */
  const runFor = async (ms: number, stepMs = 100) => {
    for (let elapsed = 0; elapsed < ms; elapsed += stepMs) {
      clock.advance(stepMs);
      await work();
    }
  };
  return { clock, db, events, worker, whatsapp, work, runFor };
}

Deno.test("the worker publishes the WhatsApp rotation and then reports qr_timeout", async () => {
  const { clock, db, worker, runFor } = setup();
  db.addDevice("d1");
  const start = clock.now();
  await worker.heartbeat();
  await worker.claim();
  // Keep the lease alive by heartbeating every 2.5 s while the pairing runs.
  for (let elapsed = 0; elapsed < 170_000; elapsed += 2_500) {
    await worker.heartbeat();
    await runFor(2_500);
  }
  const expiries = db.published.map((p) => Math.round((p.expiresAt.getTime() - start) / 100) * 100);
  assert.deepEqual(expiries, [
    60_500,
    80_500,
    100_500,
    120_500,
    140_500,
    160_500,
  ]);
  assert.equal(new Set(db.published.map((p) => p.qr)).size, 6);
  assert.equal(db.devices.get("d1")!.status, "qr_timeout");
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(
    db.calls.filter((c) => c === "report_device_status:qr_timeout").length,
    1,
  );
});

Deno.test("the first QR appears after the generation delay, with a 60 s expiry", async () => {
  const { clock, db, worker, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  await runFor(400);
  assert.equal(db.published.length, 0);
  await runFor(100);
  assert.equal(db.published.length, 1);
  assert.equal(db.published[0].expiresAt.getTime() - clock.now(), 60_000);
});

Deno.test("without a heartbeat the worker stops at 80% of the timeout, not before", async () => {
  const { clock, db, events, worker, work } = setup();
  db.addDevice("d1");
  await worker.heartbeat(); // lease: 10 s timeout → work until +8 s
  await worker.claim();
  db.heartbeatFailure = new BackendError("unavailable", "connection refused");
  clock.advance(2_500);
  await worker.heartbeat();
  clock.advance(5_499); // t = 7 999 ms
  await work();
  assert.deepEqual(worker.deviceIds, ["d1"]);
  assert.equal(events.filter((e) => e.type === "self_fenced").length, 0);
  clock.advance(1); // t = 8 000 ms
  await work();
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(events.filter((e) => e.type === "self_fenced").length, 1);
});

Deno.test("a worker that let its devices go names a new instance, so the database hands them back", async () => {
  const { clock, db, worker, work } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.heartbeat();
  await worker.claim();
  db.heartbeatFailure = new BackendError("unavailable", "timeout");
  clock.advance(8_000);
  await work(); // self-fenced: d1 dropped, which the database may never have seen
  db.heartbeatFailure = null;
  await worker.heartbeat();
  const instances = db.heartbeats.map((beat) => beat.instanceId);
  assert.ok(instances.every((id) => typeof id === "string"), "every heartbeat names the process");
  assert.equal(instances[1], instances[0], "the same holder keeps its name");
  assert.notEqual(instances.at(-1), instances[0], "after dropping its sessions it is a new holder");
});

Deno.test("a self-fenced worker makes no device write and no claim until a heartbeat succeeds", async () => {
  const { clock, db, worker, work, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  db.heartbeatFailure = new BackendError("unavailable", "timeout");
  clock.advance(8_000);
  await work();
  const before = db.calls.length;
  await runFor(60_000, 1_000);
  await worker.claim();
  assert.equal(db.calls.length, before);
  db.heartbeatFailure = null;
  await worker.heartbeat();
  await worker.claim();
  assert.deepEqual(worker.deviceIds, ["d1"]);
});

Deno.test("the lease counts from when the heartbeat was sent, not when it was answered", async () => {
  const { clock, db, worker, work } = setup();
  db.addDevice("d1");
  let answer!: () => void;
  db.heartbeatDelay = new Promise((resolve) => (answer = resolve));
  const beat = worker.heartbeat(); // sent at t = 0
  clock.advance(3_000);
  answer();
  await beat;
  await worker.claim();
  clock.advance(4_999); // t = 7 999 ms since sending
  await work();
  assert.deepEqual(worker.deviceIds, ["d1"]);
  clock.advance(1);
  await work();
  assert.deepEqual(worker.deviceIds, []);
});

Deno.test("a heartbeat that hangs does not keep the worker from fencing itself", async () => {
  const { clock, db, worker, work } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  db.heartbeatDelay = new Promise(() => {}); // never answers
  void worker.heartbeat();
  clock.advance(8_000);
  await work();
  assert.deepEqual(worker.deviceIds, []);
});

Deno.test("a fenced publish drops that device at once and only that device", async () => {
  const { db, events, worker, runFor } = setup();
  db.addDevice("d1");
  db.addDevice("d2");
  await worker.heartbeat();
  await worker.claim();
  db.reassign("d1", "server-b");
  await runFor(500);
  assert.deepEqual(worker.deviceIds, ["d2"]);
  assert.deepEqual(
    events.filter((e) => e.type === "session_dropped").map((e) => e),
    [{ type: "session_dropped", deviceId: "d1", epoch: 2, reason: "fenced" }],
  );
  assert.deepEqual(db.published.map((p) => p.deviceId), ["d2"]);
  // No retry for a fenced device.
  await runFor(5_000);
  assert.equal(events.filter((e) => e.type === "publish_rejected").length, 1);
});

Deno.test("a device missing from claim_devices is let go; a new epoch restarts pairing", async () => {
  const { db, events, worker, runFor } = setup();
  db.addDevice("d1");
  db.addDevice("d2");
  await worker.heartbeat();
  await worker.claim();
  await runFor(500);
  db.reassign("d1", "server-b");
  db.reassign("d2", "server-a"); // the user asked again and landed on us
  await worker.claim();
  assert.deepEqual(worker.deviceIds, ["d2"]);
  const reasons = events.filter((e) => e.type === "session_dropped").map((e) =>
    e.type === "session_dropped" ? [e.deviceId, e.reason] : []
  );
  assert.deepEqual(reasons, [["d1", "released"], ["d2", "new_epoch"]]);
  await runFor(500);
  assert.equal(db.published.at(-1)!.epoch, 3);
});

Deno.test("server_not_live from claim_devices revokes the lease at once", async () => {
  const { db, worker } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  db.claimDevices = () =>
    Promise.reject(new BackendError("server_not_live", "server_not_live", 409));
  await worker.claim();
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(worker.lease.isValid(Date.UTC(2026, 0, 1)), false);
});

Deno.test("with self-fencing off (a frozen server), the database fence still rejects it", async () => {
  const { clock, db, events, worker, work, runFor } = setup({
    selfFencing: false,
  });
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  await runFor(500);
  db.heartbeatFailure = new BackendError("unavailable", "partitioned");
  clock.advance(60_000);
  db.reassign("d1", "server-b");
  await work();
  assert.equal(events.filter((e) => e.type === "publish_rejected").length, 1);
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(db.published.length, 1);
});

Deno.test("a simulated scan stores the creds, then reports connected: the device stays linked here", async () => {
  const { db, worker, runFor, whatsapp } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  assert.equal(
    await whatsapp.scan("d1"),
    false,
    "no QR shown yet, nothing to scan",
  );
  await runFor(500);
  assert.equal(await whatsapp.scan("d1"), true);
  assert.equal(db.devices.get("d1")!.status, "connected");
  assert.deepEqual(
    db.calls.slice(-2),
    ["device_session_write", "report_device_status:connected"],
    "the creds are stored before the device says it is connected",
  );
  assert.ok(db.sessions.get("d1")?.has("creds\u0000creds"));
  assert.deepEqual(
    worker.snapshot().devices.map((d) => [d.deviceId, d.phase]),
    [["d1", "linked"]],
  );
  const published = db.published.length;
  // A whole pairing schedule later, with heartbeats and (complete) claims that do not list it:
  for (let elapsed = 0; elapsed < 170_000; elapsed += 2_500) {
    await worker.heartbeat();
    await worker.claim();
    await runFor(2_500, 500);
  }
  assert.equal(
    db.published.length,
    published,
    "a linked device shows no more QRs",
  );
  assert.ok(!db.calls.includes("report_device_status:qr_timeout"));
  assert.deepEqual(
    worker.deviceIds,
    ["d1"],
    "claims do not list linked devices; it stays ours",
  );
  assert.equal(await whatsapp.scan("d1"), false, "linked: nothing to scan");
  assert.equal(await whatsapp.scan("unknown"), false);
});

Deno.test("shutdown closes every session and hands the devices back", async () => {
  const { db, worker, work, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  await runFor(500);
  await worker.shutdown();
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(db.devices.get("d1")!.owner, null);
  assert.equal(db.calls.at(-1), "server_shutdown");
  await worker.claim();
  await work();
  assert.equal(db.calls.at(-1), "server_shutdown", "no call after shutdown");
});

Deno.test("the heartbeat reports the current load and capacity", async () => {
  const { db, worker } = setup();
  db.addDevice("d1");
  db.addDevice("d2");
  await worker.heartbeat();
  await worker.claim();
  await worker.heartbeat();
  assert.deepEqual(
    db.heartbeats.map((input) => input.currentLoad),
    [0, 2],
  );
});

Deno.test("the next claim comes just after another server's lease runs out, not a poll later", async () => {
  const { clock, db, worker } = setup({ pollIntervalMs: 5_000 });
  const nextPoll = () => clock.now() + 5_000;
  await worker.heartbeat();
  assert.equal(worker.nextClaimInMs(nextPoll()), 5_000, "no other server: the poll");

  db.nextLeaseExpiryMs = 1_200;
  await worker.heartbeat();
  clock.advance(300);
  assert.equal(worker.nextClaimInMs(nextPoll()), 900 + CLAIM_AFTER_EXPIRY_MS);

  // That claim spends it: the one after waits for the poll again.
  clock.advance(900 + CLAIM_AFTER_EXPIRY_MS);
  await worker.claim();
  assert.equal(worker.nextClaimInMs(nextPoll()), 5_000);

  // A lease that runs out after the poll changes nothing; the latest heartbeat wins.
  db.nextLeaseExpiryMs = 700;
  await worker.heartbeat();
  db.nextLeaseExpiryMs = 11_000;
  await worker.heartbeat();
  assert.equal(worker.nextClaimInMs(nextPoll()), 5_000);
});

Deno.test("a claim batch takes at most that many new devices per poll", async () => {
  const { db, worker } = setup({ claimBatch: 1 });
  for (const id of ["d1", "d2", "d3"]) db.addDevice(id);
  await worker.heartbeat();
  await worker.claim();
  assert.deepEqual(worker.deviceIds, ["d1"]);
  await worker.claim();
  assert.deepEqual(worker.deviceIds, ["d1", "d2"]);
  assert.deepEqual(db.claimLimits, [1, 2]);
});

Deno.test("a full claim page is not taken as the whole list: no device is dropped", async () => {
  const { db, worker } = setup({ claimBatch: 1 });
  for (const id of ["d1", "d2", "d3"]) db.addDevice(id);
  await worker.heartbeat();
  await worker.claim(); // d1
  // The database assigned two more to us elsewhere (e.g. get_device_qr moved them here).
  db.devices.get("d2")!.owner = "server-a";
  db.devices.get("d3")!.owner = "server-a";
  // Owned rows come ordered; with limit 2 the answer may omit d1.
  db.devices.delete("d1");
  db.devices.set("d1", {
    id: "d1",
    owner: "server-a",
    epoch: 2,
    status: "connecting",
    qr: null,
    qrExpiresAt: null,
  });
  await worker.claim();
  assert.ok(
    worker.deviceIds.includes("d1"),
    "d1 must survive a truncated answer",
  );
});

Deno.test("a device deleted meanwhile is dropped, not retried forever", async () => {
  const { db, events, worker, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  db.devices.delete("d1");
  await runFor(5_000);
  assert.deepEqual(worker.deviceIds, []);
  assert.equal(events.filter((e) => e.type === "publish_rejected").length, 1);
});

Deno.test("shutdown retries server_shutdown when the first answer is lost", async () => {
  const { db, worker } = setup();
  await worker.heartbeat();
  let calls = 0;
  db.shutdown = () => {
    calls++;
    return calls === 1
      ? Promise.reject(
        new BackendError("unavailable", "deadlock detected", 500),
      )
      : Promise.resolve({ released: 0, reassigned: 0 });
  };
  await worker.shutdown();
  assert.equal(calls, 2);
});

Deno.test("a device to resume without stored creds is reported logged_out, never paired", async () => {
  const { db, events, worker, runFor } = setup();
  const device = db.addDevice("d1", "server-a");
  device.status = "reconnecting";
  await worker.heartbeat();
  await worker.claim();
  await runFor(300);
  assert.equal(db.devices.get("d1")!.status, "disconnected");
  assert.equal(db.devices.get("d1")!.lastError, "logged_out");
  assert.deepEqual(worker.deviceIds, [], "stopped after logged_out");
  assert.equal(db.published.length, 0, "no QR for a device to resume");
  assert.ok(
    events.some((e) => e.type === "status_reported" && e.status === "logged_out"),
  );
  await worker.claim();
  await runFor(1_000);
  assert.equal(
    db.calls.filter((c) => c === "report_device_status:logged_out").length,
    1,
  );
});

Deno.test("a linked device whose server died is resumed elsewhere from its creds, no QR", async () => {
  const { db, worker, whatsapp, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  await runFor(500);
  assert.equal(await whatsapp.scan("d1"), true);
  // server-a dies; the failover rule hands d1 to server-b, which resumes it.
  const b = setup();
  b.db.devices = db.devices;
  b.db.sessions = db.sessions;
  b.db.heartbeat = async (input) => ({
    ...(await db.heartbeat(input)),
    serverId: "server-b",
  });
  db.failOver("d1", "server-b");
  assert.equal(db.devices.get("d1")!.status, "reconnecting");
  await b.worker.heartbeat();
  await b.worker.claim();
  assert.deepEqual(
    b.worker.snapshot().devices.map((d) => [d.deviceId, d.phase]),
    [[
      "d1",
      "resuming",
    ]],
  );
  await b.runFor(200);
  assert.equal(
    db.devices.get("d1")!.status,
    "reconnecting",
    "the handshake takes resumeMs",
  );
  await b.runFor(100);
  assert.equal(db.devices.get("d1")!.status, "connected");
  assert.equal(b.db.published.length, 0, "no QR shown on the new server");
  assert.deepEqual(b.worker.snapshot().devices.map((d) => d.phase), ["linked"]);
  // The dead server's late write of the session is refused and stops its copy.
  await assert.rejects(
    worker.device("d1")!.fenced(
      "session_write",
      (write) => db.writeSession(write, [{ type: "creds", id: "creds", value: "stale" }]),
    ),
    (error) => error instanceof BackendError && error.code === "fenced",
  );
  assert.deepEqual(worker.deviceIds, []);
  assert.notEqual(db.sessions.get("d1")!.get("creds\u0000creds"), "stale");
});

Deno.test("a linked device is stopped when the lease lapses, like any other", async () => {
  const { db, events, worker, whatsapp, runFor } = setup();
  db.addDevice("d1");
  await worker.heartbeat();
  await worker.claim();
  await runFor(500);
  await whatsapp.scan("d1");
  db.heartbeatFailure = new BackendError("unavailable", "partitioned");
  await runFor(7_500);
  assert.deepEqual(worker.deviceIds, []);
  assert.deepEqual(
    events.filter((e) => e.type === "session_dropped").map((e) =>
      e.type === "session_dropped" ? e.reason : ""
    ),
    ["lease_lapsed"],
  );
});

Deno.test("the handler is told to stop exactly the devices the client drops", async () => {
  const db = new FakeDatabase();
  const clock = new FakeClock();
  const started: string[] = [];
  const stopped: string[] = [];
  const worker = new BackendClient({
    backend: db,
    handler: {
      start: (device) => void started.push(`${device.deviceId}@${device.epoch}`),
      stop: (device, reason) => void stopped.push(`${device.deviceId}@${device.epoch}:${reason}`),
    },
    config: { serverName: "server-a" },
    clock,
  });
  db.addDevice("d1");
  db.addDevice("d2");
  await worker.heartbeat();
  await worker.claim();
  db.reassign("d1", "server-b");
  db.reassign("d2", "server-a");
  await worker.claim();
  assert.deepEqual(started, ["d1@2", "d2@2", "d2@3"]);
  assert.deepEqual(stopped, ["d1@2:released", "d2@2:new_epoch"]);
  await worker.shutdown();
  assert.deepEqual(stopped.at(-1), "d2@3:shutdown");
});
