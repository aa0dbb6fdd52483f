/**
 * Session failover: a server holding K linked (`connected`) devices, each with
 * a stored session, is SIGKILLed; how long until each device is `connected`
 * again on a live server, and how many needed a QR (must be none)?
 *
 * Real simulated servers (worker/main.ts: the package's BackendClient with the
 * simulated WhatsApp handler) behind a private gateway, on a database of its
 * own with heartbeat_timeout 15 s and workers polling every 5 s, as in the
 * connecting-device failover (failover.ts). Nobody polls get-device-qr and no
 * maintenance runs: the surviving servers' claims alone hand the sessions over
 * (claim_devices takes the sessions of servers that are not live), and each
 * resumes from the store (device_session_read of `creds`) and reports
 * `connected`. An observer reads the devices table every 200 ms; it never heals.
 */
import { PUBLISHABLE_KEY, SECRET_KEY } from "../local/gateway/keys.ts";
import { Fleet } from "../worker/fleet.ts";
import { startBenchGateway } from "./lib/gateway.ts";
import {
  benchDatabaseName,
  connect,
  createBenchDatabase,
  dropBenchDatabase,
  type Sql,
} from "./lib/pg.ts";
import { quantile } from "./lib/stats.ts";

export interface SessionFailoverOptions {
  sizes: number[];
  runs: number;
  log: (line: string) => void;
}

export interface SessionFailoverRow {
  k: number;
  p50: number;
  p99: number;
  max: number;
  connected: number;
  neededQr: number;
  total: number;
  /** From the kill until the victim's lease ran out (its last heartbeat + the timeout), median. */
  leaseLeftP50: number;
  /** From the lease running out until each device was connected: what claims and resumes take. */
  afterLeaseP50: number;
  afterLeaseP99: number;
  afterLeaseMax: number;
  runs: number;
}

export interface SessionFailoverReport {
  heartbeatTimeoutS: number;
  pollMs: number;
  resumeMs: number;
  rows: SessionFailoverRow[];
  notes: string[];
  verdicts: { target: string; measured: string; met: boolean | null }[];
}

const HEARTBEAT_TIMEOUT_S = 15;
const POLL_MS = 5_000;
/** The simulated reconnect handshake (worker/pairing.ts DEFAULT_SIMULATOR_CONFIG). */
const RESUME_MS = 300;
const RECOVERY_TIMEOUT_MS = 90_000;
/** A simulated server holds at most this many devices (its claim limit, worker/main.ts). */
const DEVICES_PER_SERVER = 100;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** K devices linked on `serverId`, each with a stored `creds` entry, as a scan leaves them. */
async function linkDevices(sql: Sql, serverId: string, k: number): Promise<string[]> {
  const rows = Array.from({ length: k }, () => ({
    userId: crypto.randomUUID(),
    deviceId: crypto.randomUUID(),
  }));
  await sql`
    insert into auth.users (id, aud, role, email, created_at, updated_at)
    select u, 'authenticated', 'authenticated', 'session-' || u || '@example.test', now(), now()
    from unnest(${rows.map((r) => r.userId)}::uuid[]) u`;
  const ids = rows.map((r) => r.deviceId);
  await sql`
    insert into public.devices (id, user_id, device_name, status, assigned_server_id,
                                assignment_epoch, assigned_at)
    select d, u, 'linked phone', 'connected', ${serverId}, 1, now()
    from unnest(${ids}::uuid[], ${rows.map((r) => r.userId)}::uuid[]) as t(d, u)`;
  // Opaque to the database; about the size of an encrypted Baileys creds entry.
  await sql`
    insert into device_assignment.device_sessions (device_id, type, id, value)
    select d, 'creds', 'creds', repeat('x', 2048) from unnest(${ids}::uuid[]) d`;
  await sql`update public.backend_servers set current_load = ${k} where id = ${serverId}`;
  return ids;
}

async function oneRun(
  sql: Sql,
  gatewayUrl: string,
  k: number,
  log: (line: string) => void,
): Promise<
  { times: number[]; afterLease: number[]; leaseLeft: number; neededQr: number; total: number }
> {
  // A run of its own: the sessions an earlier run's servers handed over on
  // shutdown would otherwise be claimed first.
  await sql`delete from public.devices`;
  await sql`delete from public.backend_servers`;
  const fleet = new Fleet({
    env: {
      SUPABASE_URL: gatewayUrl,
      SUPABASE_SECRET_KEY: SECRET_KEY,
      SUPABASE_PUBLISHABLE_KEY: PUBLISHABLE_KEY,
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
      WORKER_POLL_MS: String(POLL_MS),
      WORKER_RESUME_MS: String(RESUME_MS),
      // Workers exit when this process dies, however it dies.
      WORKER_EXIT_ON_STDIN_EOF: "1",
    },
    prefix: `session-${k}-${crypto.randomUUID().slice(0, 6)}`,
  });
  try {
    const [victim] = await fleet.start(1);
    const victimId = fleet.info(victim).serverId!;
    // Linked in SQL rather than by K simulated scans: the same rows a scan
    // leaves (status connected, a creds entry), without K pairings first.
    const ids = await linkDevices(sql, victimId, k);
    const survivors = Math.ceil(k / DEVICES_PER_SERVER) + 1;
    await fleet.start(survivors, 60_000);
    log(`session failover K=${k}: ${victim} holds ${k} linked devices, ${survivors} survivors`);

    // A crash comes at any moment: a random phase against the victim's
    // heartbeats and the survivors' polls.
    await sleep(Math.random() * (POLL_MS + (HEARTBEAT_TIMEOUT_S * 1000) / 4));
    const killedAt = Date.now();
    await fleet.kill(victim);
    // The database's clock is this machine's: when the victim's lease runs out.
    const [{ expiresAt }] = await sql`
      select extract(epoch from s.last_health_ping + cfg.heartbeat_timeout) * 1000 as "expiresAt"
      from public.backend_servers s cross join public.assignment_settings cfg
      where s.id = ${victimId}`;
    const leaseLeft = (Number(expiresAt) - killedAt) / 1000;

    const connected = new Map<string, number>();
    const deadline = killedAt + RECOVERY_TIMEOUT_MS;
    while (connected.size < k && Date.now() < deadline) {
      const rows = await sql`
        select d.id from public.devices d
        join device_assignment.live_servers l on l.id = d.assigned_server_id
        where d.id = any(${ids}::uuid[]) and d.assigned_server_id <> ${victimId}
          and d.status = 'connected'`;
      const now = Date.now();
      for (const row of rows) {
        if (!connected.has(row.id)) connected.set(row.id, (now - killedAt) / 1000);
      }
      await sleep(200);
    }
    // A device needed a QR when its session is gone (a QR published for a
    // device being resumed deletes it) or it was ever shown one after the kill.
    const [{ n }] = await sql`
      select count(*)::int as n from public.devices d
      where d.id = any(${ids}::uuid[])
        and (d.qr_updated_at > to_timestamp(${killedAt / 1000})
             or not exists (select from device_assignment.device_sessions s
                             where s.device_id = d.id and s.type = 'creds'))`;
    const times = [...connected.values()];
    return {
      times,
      afterLease: times.map((t) => t - leaseLeft),
      leaseLeft,
      neededQr: n,
      total: k,
    };
  } finally {
    await fleet.stopAll();
  }
}

export async function runSessionFailover(
  options: SessionFailoverOptions,
): Promise<SessionFailoverReport> {
  const name = benchDatabaseName("bench_session");
  const url = await createBenchDatabase(name);
  const sql = connect(url, 2);
  const gateway = await startBenchGateway(url);
  const rows: SessionFailoverRow[] = [];
  const notes: string[] = [];
  try {
    await sql`update public.assignment_settings
              set heartbeat_timeout = make_interval(secs => ${HEARTBEAT_TIMEOUT_S})`;
    for (const k of options.sizes) {
      const times: number[] = [];
      const afterLease: number[] = [];
      const leaseLeft: number[] = [];
      let total = 0;
      let neededQr = 0;
      for (let run = 0; run < options.runs; run++) {
        try {
          const result = await oneRun(sql, gateway.url, k, options.log);
          times.push(...result.times);
          afterLease.push(...result.afterLease);
          leaseLeft.push(result.leaseLeft);
          total += result.total;
          neededQr += result.neededQr;
        } catch (error) {
          options.log(`session failover K=${k}: ${error}`);
          notes.push(`K=${k}: the run failed: ${error}`);
          total += k;
        }
      }
      times.sort((a, b) => a - b);
      afterLease.sort((a, b) => a - b);
      leaseLeft.sort((a, b) => a - b);
      rows.push({
        k,
        p50: quantile(times, 0.5),
        p99: quantile(times, 0.99),
        max: times[times.length - 1] ?? NaN,
        connected: times.length,
        neededQr,
        total,
        runs: options.runs,
        leaseLeftP50: quantile(leaseLeft, 0.5),
        afterLeaseP50: quantile(afterLease, 0.5),
        afterLeaseP99: quantile(afterLease, 0.99),
        afterLeaseMax: afterLease[afterLease.length - 1] ?? NaN,
      });
    }
  } finally {
    await gateway.stop();
    await sql.end();
    await dropBenchDatabase(name);
  }

  notes.push(
    `The victim's K devices are linked in SQL (status connected, a 2 KiB creds entry each) rather than paired by K simulated scans; each simulated server holds at most ${DEVICES_PER_SERVER} devices (its claim limit), so ceil(K/${DEVICES_PER_SERVER}) + 1 servers survive. Nobody polls get-device-qr and no maintenance runs: the survivors' claims alone move the sessions. Where the time goes: until the victim's lease runs out (its last heartbeat + the timeout; the kill comes at a random moment between heartbeats), then the survivors' claims (each claims 200 ms after the lease runs out, as its last heartbeat told it, instead of at its next poll) and the resumes.`,
  );
  const budget = HEARTBEAT_TIMEOUT_S + POLL_MS / 1000 + 2;
  const verdicts = rows.map((r) => ({
    target:
      `session failover K=${r.k}: p99 ≤ heartbeat timeout + one poll + 2 s = ${budget} s, 0 QRs`,
    measured: `p99 ${r.p99.toFixed(1)} s (p50 ${r.p50.toFixed(1)} s, max ${
      r.max.toFixed(1)
    } s), ${r.connected}/${r.total} connected, ${r.neededQr} needed a QR`,
    met: r.connected === r.total && r.neededQr === 0 && r.p99 <= budget,
  }));
  return {
    heartbeatTimeoutS: HEARTBEAT_TIMEOUT_S,
    pollMs: POLL_MS,
    resumeMs: RESUME_MS,
    rows,
    notes,
    verdicts,
  };
}

if (import.meta.main) {
  const sizes = Deno.args.length > 0 ? Deno.args.map(Number) : [100, 1000];
  const report = await runSessionFailover({
    sizes,
    runs: 1,
    log: (line) => console.error(line),
  });
  console.log(JSON.stringify(report, null, 2));
}
