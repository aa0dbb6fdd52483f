/**
 * Concurrency of the SQL API, with real parallel connections: the guarantees
 * that FOR UPDATE SKIP LOCKED, the epoch and the maintenance lock exist for.
 * Talks to the database directly (SUPABASE_DB_URL, else the local stack).
 */
import assert from "node:assert/strict";
import postgres from "postgres";

const DB_URL = Deno.env.get("SUPABASE_DB_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres";

function connect(): postgres.Sql {
  return postgres(DB_URL, { max: 1, onnotice: () => {} });
}

/** A fleet of its own: servers and devices tagged with a run id, removed after. */
async function withFleet(
  fn: (tag: string, admin: postgres.Sql) => Promise<void>,
): Promise<void> {
  const admin = connect();
  const tag = `conc-${crypto.randomUUID().slice(0, 8)}`;
  const userId = crypto.randomUUID();
  await admin`insert into auth.users (id, email) values (${userId}, ${tag + "@example.com"})`;
  // Default timings for the test's duration, whatever another suite left.
  const [saved] = await admin`select * from public.assignment_settings`;
  await admin`update public.assignment_settings set heartbeat_timeout = '30 seconds',
                connecting_grace = '45 seconds', reassign_cooldown = '15 seconds'`;
  try {
    await fn(tag, admin);
  } finally {
    await admin`delete from public.devices where user_id = ${userId}`;
    await admin`delete from public.backend_servers where server_name like ${tag + "%"}`;
    await admin`delete from auth.users where id = ${userId}`;
    await admin`update public.assignment_settings set heartbeat_timeout = ${saved.heartbeat_timeout},
                  connecting_grace = ${saved.connecting_grace},
                  reassign_cooldown = ${saved.reassign_cooldown}`;
    await admin.end();
  }
}

async function heartbeat(sql: postgres.Sql, name: string): Promise<string> {
  const [{ result }] = await sql`select public.server_heartbeat(${name}, 0, null, '{}') as result`;
  return (result as { server_id: string }).server_id;
}

async function seed(admin: postgres.Sql, tag: string, count: number, serverId: string | null) {
  await admin`
    insert into public.devices (user_id, device_name, status, assigned_server_id, connecting_since)
    select u.id, ${tag} || '-' || n, 'connecting', ${serverId}, now()
    from generate_series(1, ${count}) n, auth.users u
    where u.email = ${tag + "@example.com"}`;
}

Deno.test("8 servers claiming concurrently never get the same device", async () => {
  await withFleet(async (tag, admin) => {
    const devices = 2000;
    await seed(admin, tag, devices, null);
    const claimers = Array.from({ length: 8 }, () => connect());
    try {
      const serverIds = await Promise.all(
        claimers.map((sql, i) => heartbeat(sql, `${tag}-server-${i}`)),
      );
      const claimedBy = new Map<string, number[]>();
      let fenced = 0;
      await Promise.all(claimers.map(async (sql, i) => {
        for (let round = 0; round < 1000; round++) {
          if (round % 20 === 0) await heartbeat(sql, `${tag}-server-${i}`);
          const rows = await sql<
            { device_id: string; claimed: boolean; device_name: string; assignment_epoch: string }[]
          >`select device_id, claimed, device_name, assignment_epoch
            from public.claim_devices(${serverIds[i]}, 25)`;
          for (const row of rows.filter((r) => r.claimed && r.device_name?.startsWith(tag))) {
            claimedBy.set(row.device_id, [...(claimedBy.get(row.device_id) ?? []), i]);
          }
          // Pair each device held (the worker's job), under its epoch, so it
          // leaves this server's working set; a fenced write means two owners.
          for (const row of rows) {
            try {
              await sql`select public.report_device_status(${row.device_id}, ${serverIds[i]},
                          ${row.assignment_epoch}, 'connected')`;
            } catch (error) {
              if ((error as { message?: string }).message === "fenced") fenced++;
              else throw error;
            }
          }
          if (rows.length > 0) continue;
          // Nothing held or taken: either no orphan is left, or the rest were
          // locked by other claimers at that instant (SKIP LOCKED): look again.
          const [{ left }] = await sql`
            select count(*)::int as left from device_assignment.orphaned_devices
            where device_name like ${tag + "-%"}`;
          if (left === 0) break;
        }
      }));

      assert.equal(fenced, 0, "no claimer's write was fenced: nobody else owned its devices");
      const twice = [...claimedBy.values()].filter((by) => by.length > 1);
      assert.equal(twice.length, 0, `devices claimed by more than one server: ${twice.length}`);
      // Judged from the database, not only from what the claimers saw: on a
      // shared database another live fleet may legitimately claim some orphans.
      const [{ claimEvents, claimedDevices, orphaned }] = await admin`
        select count(*) filter (where e.reason = 'claimed')::int as "claimEvents",
               count(distinct e.device_id) filter (where e.reason = 'claimed')::int
                 as "claimedDevices",
               (select count(*)::int from device_assignment.orphaned_devices o
                 where o.device_name like ${tag + "-%"}) as orphaned
        from public.device_assignment_events e
        join public.devices d on d.id = e.device_id
        where d.device_name like ${tag + "-%"}`;
      assert.equal(orphaned, 0, "no orphan is left");
      assert.equal(claimEvents, claimedDevices, "the audit trail holds one claim per device");
      const [{ connected }] = await admin`
        select count(*)::int as connected from public.devices
        where id = any(${[...claimedBy.keys()]}::uuid[]) and status = 'connected'`;
      assert.equal(connected, claimedBy.size, "every claimed device was paired by its claimer");
      assert.ok(claimedBy.size > devices / 2, "the claimers, not someone else, did the work");

      const [{ mismatched }] = await admin`
        select count(*)::int as mismatched from public.devices d
        where d.id = any(${[...claimedBy.keys()]}::uuid[])
          and d.assigned_server_id <> all(${serverIds}::uuid[])`;
      assert.equal(mismatched, 0, "every claimed device sits on one of the claimers");
      const perServer = new Set([...claimedBy.values()].map((by) => by[0]));
      assert.ok(perServer.size > 1, "the work was actually spread over concurrent claimers");
    } finally {
      await Promise.all(claimers.map((sql) => sql.end()));
    }
  });
});

Deno.test("concurrent maintenance passes never reassign a device twice", async () => {
  await withFleet(async (tag, admin) => {
    const devices = 500;
    const [dead] = await admin<{ id: string }[]>`
      insert into public.backend_servers (server_name, last_health_ping)
      values (${tag + "-dead"}, now() - interval '1 hour') returning id`;
    await seed(admin, tag, devices, dead.id);
    await heartbeat(admin, `${tag}-live-a`);
    await heartbeat(admin, `${tag}-live-b`);

    const passes = Array.from({ length: 6 }, () => connect());
    try {
      await Promise.all(
        passes.map((sql) => sql`select public.run_assignment_maintenance() as result`),
      );
      const [{ moves, devicesMoved, stillOrphaned }] = await admin`
        select count(*)::int as moves,
               count(distinct e.device_id)::int as "devicesMoved",
               (select count(*)::int from device_assignment.orphaned_devices o
                 where o.device_name like ${tag + "-%"}) as "stillOrphaned"
        from public.device_assignment_events e
        join public.devices d on d.id = e.device_id
        where d.device_name like ${tag + "-%"} and e.reason = 'server_inactive'`;
      assert.equal(stillOrphaned, 0, "no device is left orphaned");
      assert.equal(devicesMoved, devices, "every device was moved");
      assert.equal(moves, devices, "and each exactly once");
    } finally {
      await Promise.all(passes.map((sql) => sql.end()));
    }
  });
});

Deno.test("claims racing maintenance and user polls hand each orphan to one owner", async () => {
  await withFleet(async (tag, admin) => {
    const devices = 300;
    const [dead] = await admin<{ id: string }[]>`
      insert into public.backend_servers (server_name, last_health_ping)
      values (${tag + "-dead"}, now() - interval '1 hour') returning id`;
    await seed(admin, tag, devices, dead.id);
    const workers = Array.from({ length: 4 }, () => connect());
    const healer = connect();
    try {
      const ids = await Promise.all(workers.map((sql, i) => heartbeat(sql, `${tag}-w${i}`)));
      await Promise.all([
        ...workers.map(async (sql, i) => {
          for (let round = 0; round < 20; round++) {
            await sql`select * from public.claim_devices(${ids[i]}, 20)`;
          }
        }),
        (async () => {
          for (let round = 0; round < 5; round++) {
            await healer`select public.run_assignment_maintenance()`;
          }
        })(),
      ]);
      const [{ orphaned, epochsDiverged }] = await admin`
        select (select count(*)::int from device_assignment.orphaned_devices o
                 where o.device_name like ${tag + "-%"}) as orphaned,
               (select count(*)::int from public.devices d
                 where d.device_name like ${tag + "-%"}
                   and d.assignment_epoch <> (select count(*) from public.device_assignment_events e
                                               where e.device_id = d.id)) as "epochsDiverged"`;
      assert.equal(orphaned, 0, "every orphan found a live owner");
      assert.equal(epochsDiverged, 0, "every epoch bump has exactly one audit row");
    } finally {
      await Promise.all([...workers, healer].map((sql) => sql.end()));
    }
  });
});

Deno.test("servers draining at the same moment never deadlock", async () => {
  await withFleet(async (tag, admin) => {
    const servers = Array.from({ length: 6 }, () => connect());
    try {
      const ids = await Promise.all(servers.map((sql, i) => heartbeat(sql, `${tag}-drain-${i}`)));
      for (const id of ids) await seed(admin, tag, 40, id);
      const results = await Promise.allSettled(
        servers.map((sql, i) => sql`select public.server_shutdown(${ids[i]}) as result`),
      );
      const errors = results.filter((r) => r.status === "rejected")
        .map((r) => String((r as PromiseRejectedResult).reason?.message));
      assert.deepEqual(errors, [], "every drain completed");
      const [{ active }] = await admin`
        select count(*)::int as active from public.backend_servers
        where server_name like ${tag + "-drain-%"} and is_active`;
      assert.equal(active, 0, "every drained server is inactive");
    } finally {
      await Promise.all(servers.map((sql) => sql.end()));
    }
  });
});

Deno.test("a server's session write is never accepted after its device was handed over", async () => {
  await withFleet(async (tag, admin) => {
    const a = connect();
    const b = connect();
    try {
      const serverA = await heartbeat(a, `${tag}-a`);
      const serverB = await heartbeat(b, `${tag}-b`);
      await seed(admin, tag, 1, serverA);
      const [{ id, epoch }] = await admin<{ id: string; epoch: string }[]>`
        select id, assignment_epoch::text as epoch from public.devices
        where device_name = ${tag + "-1"}`;
      await a`select public.report_device_status(${id}, ${serverA}, ${epoch}, 'connected')`;
      const write = (sql: postgres.Sql, server: string, at: string | number, value: string) =>
        sql`select public.device_session_write(${id}, ${server}, ${at},
              ${JSON.stringify([{ type: "creds", id: "creds", value }])}::text::jsonb)`;
      await write(a, serverA, epoch, "A-0");

      // Server A keeps writing its session, as Baileys does, while it dies and
      // server B takes the device over; each write is timed.
      const writesA: { startedAt: number; accepted: boolean }[] = [];
      let handedOverAt = Infinity;
      let stop = false;
      const writerA = (async () => {
        for (let i = 1; !stop; i++) {
          const startedAt = performance.now();
          try {
            await write(a, serverA, epoch, `A-${i}`);
            writesA.push({ startedAt, accepted: true });
          } catch (error) {
            if ((error as { message?: string }).message !== "fenced") throw error;
            writesA.push({ startedAt, accepted: false });
          }
        }
      })();
      await new Promise((resolve) => setTimeout(resolve, 50));
      await admin`update public.backend_servers set last_health_ping = now() - interval '1 hour'
                  where id = ${serverA}`;
      let resumed: { assignment_epoch: string } | undefined;
      for (let round = 0; round < 200 && !resumed; round++) {
        const rows = await b<{ device_id: string; status: string; assignment_epoch: string }[]>`
          select device_id, status, assignment_epoch::text from public.claim_devices(${serverB}, 100)`;
        resumed = rows.find((r) => r.device_id === id && r.status === "reconnecting");
        if (resumed) handedOverAt = performance.now();
      }
      assert.ok(resumed, "server B took the device over, to resume its session");
      let lastB = "";
      for (let j = 0; j < 20; j++) {
        lastB = `B-${j}`;
        await write(b, serverB, resumed!.assignment_epoch, lastB);
      }
      stop = true;
      await writerA;

      const late = writesA.filter((w) => w.startedAt > handedOverAt && w.accepted);
      assert.equal(late.length, 0, "no write of server A was accepted after the handover");
      assert.ok(writesA.some((w) => w.accepted), "server A wrote before the handover");
      assert.ok(writesA.some((w) => !w.accepted), "server A kept writing after it and was fenced");
      const [{ value }] = await admin`select value from device_assignment.device_sessions
                                      where device_id = ${id} and type = 'creds'`;
      assert.equal(value, lastB, "the session holds the new owner's last write");
    } finally {
      await Promise.all([a.end(), b.end()]);
    }
  });
});
