/**
 * The fleet on the real stack: worker processes against the gateway and the
 * database, through the backend contract only. Needs the local stack (or
 * SUPABASE_URL); when it cannot be reached these tests fail, they never skip.
 */
import assert from "node:assert/strict";
import { closeStack, createUser, getStack, sql } from "../e2e/harness.ts";
import { Fleet, type FleetEvent } from "../../worker/fleet.ts";

interface Scenario {
  heartbeatTimeoutS: number;
  workerEnv: Record<string, string>;
  workers: number;
  devices: number;
}

/**
 * Runs `body` with a fleet, a user owning `devices` connecting devices, and a
 * short heartbeat timeout; restores the settings and stops every worker after.
 */
async function withFleet(
  scenario: Scenario,
  body: (
    ctx: { fleet: Fleet; deviceIds: string[]; serverIds: Map<string, string> },
  ) => Promise<void>,
) {
  const stack = await getStack();
  const db = await sql();
  const [previous] = await db`select heartbeat_timeout from public.assignment_settings`;
  await db`update public.assignment_settings
           set heartbeat_timeout = make_interval(secs => ${scenario.heartbeatTimeoutS})`;
  const user = await createUser();
  const rows = await db`
    insert into public.devices (user_id, device_name, status, connecting_since)
    select ${user.id}, 'fleet test ' || n, 'connecting', now()
    from generate_series(1, ${scenario.devices}) n
    returning id`;
  const deviceIds = rows.map((row) => row.id as string);
  const fleet = new Fleet({
    env: {
      SUPABASE_URL: stack.url,
      SUPABASE_SECRET_KEY: stack.secretKey,
      SUPABASE_PUBLISHABLE_KEY: stack.publishableKey!,
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
      WORKER_POLL_MS: "300",
      ...scenario.workerEnv,
    },
    prefix: `fleet-test-${crypto.randomUUID().slice(0, 8)}`,
  });
  try {
    await fleet.start(scenario.workers);
    const serverIds = new Map(fleet.list().map((w) => [w.name, w.serverId!]));
    await body({ fleet, deviceIds, serverIds });
  } finally {
    await fleet.stopAll();
    await db`update public.assignment_settings set heartbeat_timeout = ${previous.heartbeat_timeout}`;
    await db`update public.devices set status = 'disconnected', assigned_server_id = null
             where id = any(${deviceIds}::uuid[])`;
    await closeStack();
  }
}

function published(
  event: FleetEvent,
): event is FleetEvent & { deviceId: string; attemptedAt: number } {
  return event.type === "published";
}

/** Waits until every device has had a QR accepted, returns who published it first. */
async function firstQrs(fleet: Fleet, deviceIds: string[], timeoutMs: number) {
  const owner = new Map<string, string>();
  await Promise.all(deviceIds.map(async (id) => {
    const event = await fleet.waitFor((e) => published(e) && e.deviceId === id, timeoutMs);
    owner.set(id, event.worker);
  }));
  return owner;
}

Deno.test({
  name: "a killed worker's connecting devices all get a fresh QR from another worker",
  async fn() {
    await withFleet({
      heartbeatTimeoutS: 4,
      workers: 3,
      devices: 6,
      workerEnv: { QR_GENERATION_MS: "200" },
    }, async ({ fleet, deviceIds, serverIds }) => {
      const owners = await firstQrs(fleet, deviceIds, 20_000);
      const counts = new Map<string, number>();
      for (const worker of owners.values()) counts.set(worker, (counts.get(worker) ?? 0) + 1);
      const victim = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
      const victimDevices = deviceIds.filter((id) => fleet.info(victim).devices.includes(id));
      assert.ok(victimDevices.length > 0, "the victim works on some of our devices");

      const killedAt = Date.now();
      await fleet.kill(victim);
      const recoveries = await Promise.all(victimDevices.map((id) =>
        fleet.waitFor(
          (e) => published(e) && e.deviceId === id && e.worker !== victim && e.ts > killedAt,
          // heartbeat timeout + a poll + QR generation, with room for a loaded machine
          20_000,
        )
      ));
      const slowest = Math.max(...recoveries.map((e) => e.ts - killedAt));
      console.log(`fresh QRs for ${victimDevices.length} devices within ${slowest} ms of SIGKILL`);

      const db = await sql();
      const state = await db`
        select id, assigned_server_id, qr_expires_at > now() as fresh from public.devices
        where id = any(${victimDevices}::uuid[])`;
      for (const row of state) {
        assert.notEqual(
          row.assigned_server_id,
          serverIds.get(victim),
          `${row.id} left the dead server`,
        );
        assert.equal(row.fresh, true, `${row.id} has a fresh QR`);
      }
    });
  },
});

Deno.test({
  name: "a partitioned worker's publishes are all rejected after its devices are reassigned",
  async fn() {
    await withFleet({
      heartbeatTimeoutS: 3,
      workers: 2,
      devices: 4,
      // QRs every 500 ms, never timing out, so the partitioned worker keeps publishing.
      workerEnv: {
        QR_FIRST_TTL_MS: "500",
        QR_ROTATION_MS: "500",
        QR_MAX: "1000",
        QR_GENERATION_MS: "100",
      },
    }, async ({ fleet, deviceIds }) => {
      await firstQrs(fleet, deviceIds, 20_000);
      const victim = fleet.list().sort((a, b) =>
        deviceIds.filter((id) =>
          b.devices.includes(id)
        ).length -
        deviceIds.filter((id) => a.devices.includes(id)).length
      )[0].name;
      const victimDevices = deviceIds.filter((id) => fleet.info(victim).devices.includes(id));
      assert.ok(victimDevices.length > 0, "the victim works on some of our devices");

      const partitionedAt = Date.now();
      await fleet.partition(victim, { selfFencing: false });

      // Reassigned: another worker started a session on it (its claim returned,
      // so the new epoch was committed before this moment).
      const reassignedAt = new Map<string, number>();
      await Promise.all(victimDevices.map(async (id) => {
        const event = await fleet.waitFor(
          (e) =>
            e.type === "session_started" && e.deviceId === id && e.worker !== victim &&
            e.ts > partitionedAt,
          20_000,
        );
        reassignedAt.set(id, event.ts);
      }));
      // Give the partitioned worker time to try its next QRs.
      await new Promise((resolve) => setTimeout(resolve, 2_000));

      const mine = fleet.events.filter((e) => e.worker === victim && e.ts > partitionedAt);
      const acceptedWhilePartitioned = mine.filter(published);
      assert.ok(
        acceptedWhilePartitioned.length > 0,
        "while still the owner, the partitioned worker kept publishing",
      );
      // Clocks of two processes on one host; allow them a few ms apart.
      const SKEW_MS = 50;
      const acceptedAfter = acceptedWhilePartitioned.filter((e) =>
        e.attemptedAt > reassignedAt.get(e.deviceId)! + SKEW_MS
      );
      assert.deepEqual(acceptedAfter, [], "no publish accepted after reassignment");
      for (const id of victimDevices) {
        const rejected = mine.filter((e) =>
          e.type === "publish_rejected" && e.deviceId === id && e.code === "fenced"
        );
        assert.ok(rejected.length >= 1, `${id}: the stale publish was fenced`);
        const dropped = mine.find((e) =>
          e.type === "session_dropped" && e.deviceId === id && e.reason === "fenced"
        );
        assert.ok(dropped, `${id}: the worker dropped the device once fenced`);
      }
      assert.deepEqual(
        fleet.info(victim).devices.filter((id) => victimDevices.includes(id)),
        [],
        "it works on none of them any more",
      );
    });
  },
});

Deno.test({
  name: "a killed worker's linked devices reconnect on another worker from their session, no QR",
  async fn() {
    await withFleet({
      heartbeatTimeoutS: 3,
      workers: 3,
      devices: 6,
      workerEnv: { QR_GENERATION_MS: "100", WORKER_RESUME_MS: "200" },
    }, async ({ fleet, deviceIds, serverIds }) => {
      await firstQrs(fleet, deviceIds, 20_000);
      const linkedBy = new Map<string, string>();
      for (const id of deviceIds) {
        const worker = await fleet.scan(id);
        assert.ok(worker, `${id} was linked by a scan`);
        linkedBy.set(id, worker);
      }
      const counts = new Map<string, number>();
      for (const worker of linkedBy.values()) counts.set(worker, (counts.get(worker) ?? 0) + 1);
      const victim = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0];
      const victimDevices = deviceIds.filter((id) => linkedBy.get(id) === victim);

      const killedAt = Date.now();
      await fleet.kill(victim);
      const resumed = await Promise.all(victimDevices.map((id) =>
        fleet.waitFor(
          (e) =>
            e.type === "status_reported" && e.status === "connected" && e.deviceId === id &&
            e.worker !== victim && e.ts > killedAt,
          20_000,
        )
      ));
      const slowest = Math.max(...resumed.map((e) => e.ts - killedAt));
      console.log(`${victimDevices.length} linked devices connected again within ${slowest} ms`);
      assert.ok(
        !fleet.events.some((e) =>
          published(e) && victimDevices.includes(e.deviceId) && e.ts > killedAt
        ),
        "no QR was published for a device with a stored session",
      );

      const db = await sql();
      const state = await db`
        select id, status, assigned_server_id from public.devices
        where id = any(${victimDevices}::uuid[])`;
      for (const row of state) {
        assert.equal(row.status, "connected", `${row.id} is connected`);
        assert.notEqual(
          row.assigned_server_id,
          serverIds.get(victim),
          `${row.id} left the dead server`,
        );
      }
    });
  },
});

Deno.test({
  name:
    "a worker killed and restarted under its name before its lease lapses resumes its linked devices",
  async fn() {
    // The timeout is long enough that only the restart itself can move them:
    // the database never sees this server die.
    await withFleet({
      heartbeatTimeoutS: 60,
      workers: 1,
      devices: 3,
      workerEnv: { QR_GENERATION_MS: "100", WORKER_RESUME_MS: "200" },
    }, async ({ fleet, deviceIds }) => {
      await firstQrs(fleet, deviceIds, 20_000);
      for (const id of deviceIds) assert.ok(await fleet.scan(id), `${id} was linked by a scan`);
      const [name] = fleet.list().map((worker) => worker.name);

      const killedAt = Date.now();
      await fleet.kill(name);
      fleet.add(name);
      const resumed = await Promise.all(deviceIds.map((id) =>
        fleet.waitFor(
          (e) =>
            e.type === "status_reported" && e.status === "connected" && e.deviceId === id &&
            e.ts > killedAt,
          20_000,
        )
      ));
      const slowest = Math.max(...resumed.map((e) => e.ts - killedAt));
      console.log(
        `${deviceIds.length} linked devices resumed by the restarted process in ${slowest} ms`,
      );
      assert.ok(
        !fleet.events.some((e) =>
          published(e) && deviceIds.includes(e.deviceId) && e.ts > killedAt
        ),
        "no QR was published for a device with a stored session",
      );
    });
  },
});
