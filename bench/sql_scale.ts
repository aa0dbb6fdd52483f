/**
 * SQL at scale: the maintenance pass, claims, bulk reassignment and the health
 * call against 10k / 100k / 1M devices on 1,000 live servers, in a database of
 * its own (bench_scale). Data is generated set-based; every scenario that
 * changes devices either runs in a transaction that is rolled back or is
 * restored afterwards, so each repetition sees the same table.
 */
import {
  asSuperuser,
  benchDatabaseName,
  connect,
  createBenchDatabase,
  dropBenchDatabase,
  type Sql,
} from "./lib/pg.ts";
import { summarize, type Summary } from "./lib/stats.ts";

export const LIVE_SERVERS = 1000;
const DEAD_SERVERS = 20;
const BULK_ORPHANS = 10_000;
/** Claims: 8 concurrent claimers take batches of 100 ... */
export const CLAIMERS = 8;
export const CLAIM_BATCH = 100;
/**
 * ... until this many devices are claimed, the same at every table size (the
 * pool of 10,000 devices holds only 3,800 disconnected ones), so claims/s at
 * 10k and at 1M measure the same work. The peers (peers.ts) fetch as many jobs.
 */
export const CLAIM_POOL = 3_000;
/**
 * Claims each claimer's connection makes, rolled back, before the timed run:
 * PostgreSQL compiles plpgsql functions per connection and plans a function's
 * statements afresh for its first 5 calls before it settles on a cached plan.
 * A gateway's pooled connections (and pg-boss's pool, warm from its enqueue)
 * have long done both; a fresh connection per run measured that start-up.
 */
const WARM_CLAIMS = 6;

export interface ScaleReps {
  idle: number;
  orphan: number;
  bulk: number;
  claim: number;
  health: number;
}

export interface ScaleOptions {
  sizes: number[];
  reps: ScaleReps;
  /** Capture EXPLAIN (ANALYZE, BUFFERS) of the hot statements at the largest size. */
  explain: boolean;
  log: (line: string) => void;
  database?: string;
}

export interface ClaimRun {
  claimed: number;
  seconds: number;
  perSecond: number;
  duplicates: number;
  leftOrphaned: number;
  calls: number;
}

/** One step of a claim in the profiled run: wall time and buffers per call. */
export interface ClaimStep {
  step: "claim" | "queue lock" | "move";
  calls: number;
  msPerCall: number;
  buffersPerCall: number;
}

export interface ScaleResult {
  devices: number;
  connecting: number;
  generateSeconds: number;
  idleMs: Summary;
  idleReportedMs: Summary;
  idleNotIdle: number;
  orphanCount: number;
  orphanMs: Summary;
  orphanMoved: number;
  bulkCount: number;
  bulkMs: Summary;
  bulkMoved: number;
  claims: ClaimRun[];
  claimsPerSecond: Summary;
  /** A further claim run, untimed, with pg_stat_statements tracking nested statements. */
  claimProfile: {
    perSecond: number;
    /** The devices waiting when the claims start, and the heap pages they lie on. */
    queueDevices: number;
    queuePages: number;
    steps: ClaimStep[];
  };
  healthMs: Summary;
}

export interface Plan {
  scenario: string;
  durationMs: number;
  text: string;
}

export interface ScaleReport {
  results: ScaleResult[];
  plans: Plan[];
}

const uuidOf = (kind: string, i: string) => `md5('${kind}' || ${i})::uuid`;

export async function createFleet(sql: Sql): Promise<void> {
  await sql.unsafe(`
    insert into public.backend_servers
      (id, server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping)
    select ${
    uuidOf("server", "i")
  }, 'bench-live-' || lpad(i::text, 4, '0'), true, true, 0, 1000, now()
    from generate_series(0, ${LIVE_SERVERS - 1}) i;
    -- Servers that stopped heartbeating an hour ago: where orphans come from.
    insert into public.backend_servers
      (id, server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping)
    select ${uuidOf("dead", "i")}, 'bench-dead-' || lpad(i::text, 2, '0'), false, true, 0, 1000,
           now() - interval '1 hour'
    from generate_series(0, ${DEAD_SERVERS - 1}) i;
    create table public.bench_orphan_pool (id uuid primary key);
  `);
}

/**
 * Replaces the devices with `n` new ones: ~60% connected, ~38% disconnected,
 * 1% connecting with a fresh QR on a live server, 1% qr_timeout or error.
 */
export async function generateDevices(sql: Sql, n: number): Promise<number> {
  const started = performance.now();
  const users = Math.max(100, Math.floor(n / 10));
  await sql.unsafe(`
    -- cascade: every table that hangs off a device (sessions, pairing requests,
    -- error texts, and whatever comes next) goes with it.
    truncate public.device_assignment_events, public.devices, public.bench_orphan_pool cascade;
    insert into auth.users (id, aud, role, email, created_at, updated_at)
    select ${uuidOf("user", "i")}, 'authenticated', 'authenticated',
           'bench-' || i || '@example.test', now(), now()
    from generate_series(0, ${users - 1}) i
    on conflict do nothing;
    insert into public.devices
      (id, user_id, device_name, status, qr_code, qr_updated_at, qr_expires_at,
       assigned_server_id, assignment_epoch, assigned_at, connecting_since, created_at, updated_at)
    select ${uuidOf("device", "g")},
           ${uuidOf("user", `(g % ${users})`)},
           'bench device ' || g,
           s.status,
           case when s.status = 'connecting' then 'bench-qr-' || g end,
           case when s.status = 'connecting' then now() - interval '5 seconds' end,
           case when s.status = 'connecting' then now() + interval '1 hour' end,
           case when s.status in ('connecting', 'connected') then ${
    uuidOf("server", "s.server")
  } end,
           1,
           case when s.status = 'connecting' then now() - interval '30 seconds'
                when s.status = 'connected' then now() - interval '1 day' end,
           case when s.status = 'connecting' then now() - interval '30 seconds' end,
           now() - interval '30 days',
           now() - interval '1 day'
    from (
      select g,
             abs(hashint4(g # 12345)) % ${LIVE_SERVERS} as server,
             case when r < 10 then 'connecting'
                  when r < 610 then 'connected'
                  when r < 990 then 'disconnected'
                  when r < 995 then 'qr_timeout'
                  else 'error' end as status
      from (select g, abs(hashint4(g)) % 1000 as r from generate_series(0, ${n - 1}) g) x
    ) s;
    insert into public.bench_orphan_pool
    select id from public.devices where status = 'disconnected'
    order by hashtext(id::text) limit ${BULK_ORPHANS};
  `);
  await recomputeLoads(sql);
  await sql.unsafe(
    `vacuum analyze public.devices, public.backend_servers, public.assignment_settings, auth.users`,
  );
  return (performance.now() - started) / 1000;
}

async function recomputeLoads(sql: Sql): Promise<void> {
  await sql.unsafe(`
    update public.backend_servers s
       set current_load = coalesce(c.n, 0),
           max_capacity = greatest(1000, coalesce(c.n, 0) + 1000)
      from public.backend_servers s2
      left join (select assigned_server_id, count(*)::integer as n
                   from public.devices
                  where status in ('connecting', 'connected')
                  group by assigned_server_id) c on c.assigned_server_id = s2.id
     where s.id = s2.id
  `);
}

/**
 * Vacuums between scenarios: rolled-back and undone runs leave dead rows, and
 * a scenario should not pay for the ones before it.
 */
export async function settle(sql: Sql): Promise<void> {
  await sql.unsafe(
    `vacuum analyze public.devices, public.backend_servers, public.device_assignment_events`,
  );
}

/** What live workers do all the time: heartbeat, and rotate their QRs. */
export async function freshen(sql: Sql): Promise<void> {
  await sql.unsafe(`
    update public.backend_servers set last_health_ping = now(), is_active = true
     where server_name like 'bench-live-%';
    update public.devices set qr_updated_at = now(), qr_expires_at = now() + interval '1 hour'
     where status = 'connecting' and assigned_server_id is not null
       and qr_updated_at < now() - interval '15 seconds';
  `);
}

/** Turns `k` pool devices into orphans of dead servers (inside the caller's transaction). */
export function orphanPoolSql(k: number): string {
  return `
    update public.devices d
       set status = 'connecting',
           assigned_server_id = md5('dead' || (abs(hashtext(d.id::text)) % ${DEAD_SERVERS}))::uuid,
           assigned_at = now() - interval '2 minutes',
           connecting_since = now() - interval '2 minutes',
           qr_code = null, qr_updated_at = null, qr_expires_at = null,
           last_reassigned_at = null, reassign_count = 0
     where d.id in (select id from public.bench_orphan_pool order by id limit ${k})`;
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const started = performance.now();
  const value = await fn();
  return [performance.now() - started, value];
}

/** Runs `fn` in a transaction on one connection, then rolls it back. */
export async function rolledBack<T>(sql: Sql, fn: (tx: Sql) => Promise<T>): Promise<T> {
  const tx = await sql.reserve();
  try {
    await tx`begin`;
    return await fn(tx as unknown as Sql);
  } finally {
    await tx`rollback`.catch(() => {});
    tx.release();
  }
}

type MaintenanceResult = Record<string, number | boolean>;

async function maintenance(sql: Sql): Promise<MaintenanceResult> {
  const [row] = await sql`select public.run_assignment_maintenance() as r`;
  return row.r as MaintenanceResult;
}

function needsWork(r: MaintenanceResult): number {
  return ["servers_marked_inactive", "orphaned_reassigned", "stale_reassigned", "left_unassigned"]
    .reduce((sum, key) => sum + Number(r[key] ?? 0), 0);
}

export async function measureIdle(sql: Sql, reps: number) {
  await freshen(sql);
  for (let i = 0; i < 2; i++) await maintenance(sql); // warm caches and plans
  const wall: number[] = [];
  const reported: number[] = [];
  let notIdle = 0;
  for (let i = 0; i < reps; i++) {
    const [ms, r] = await timed(() => maintenance(sql));
    wall.push(ms);
    reported.push(Number(r.duration_ms));
    if (needsWork(r) > 0) notIdle++;
  }
  return { wall: summarize(wall), raw: wall, reported: summarize(reported), notIdle };
}

export async function measureOrphaned(sql: Sql, k: number, reps: number) {
  const wall: number[] = [];
  let moved = 0;
  for (let i = 0; i < reps; i++) {
    await freshen(sql);
    const [ms, r] = await rolledBack(sql, async (tx) => {
      await tx.unsafe(orphanPoolSql(k));
      return await timed(() => maintenance(tx));
    });
    wall.push(ms);
    moved = Number(r.orphaned_reassigned);
  }
  return { wall: summarize(wall), raw: wall, moved };
}

export async function measureBulk(sql: Sql, k: number, reps: number) {
  const wall: number[] = [];
  let moved = 0;
  for (let i = 0; i < reps; i++) {
    await freshen(sql);
    const [ms, count] = await rolledBack(sql, async (tx) => {
      await tx.unsafe(orphanPoolSql(k));
      return await timed(async () => {
        const [row] = await tx`select (public.reassign_devices('inactive') ->> 'count')::int as n`;
        return row.n as number;
      });
    });
    wall.push(ms);
    moved = count;
  }
  return { wall: summarize(wall), raw: wall, moved };
}

/**
 * 8 claimers, each a worker cycling through its own servers, take the pool of
 * unassigned connecting devices in batches of 100 until none is left. Every
 * device must be handed out exactly once.
 */
export async function claimRun(
  url: string,
  sql: Sql,
  k: number,
  afterWarmUp?: () => Promise<void>,
): Promise<ClaimRun> {
  await sql.unsafe(`
    truncate public.device_assignment_events;
    update public.devices d
       set status = 'connecting', assigned_server_id = null, assigned_at = null,
           connecting_since = now(), qr_code = null, qr_updated_at = null, qr_expires_at = null
     where d.id in (select id from public.bench_orphan_pool order by id limit ${k});
  `);
  await freshen(sql);
  const servers = (await sql`
    select id from public.backend_servers where server_name like 'bench-live-%' order by server_name
  `).map((r) => r.id as string);
  const pool = connect(url, CLAIMERS);
  const claimedIds: string[] = [];
  let calls = 0;
  try {
    const conns = await Promise.all(Array.from({ length: CLAIMERS }, () => pool.reserve()));
    await Promise.all(conns.map(async (conn, claimer) => {
      for (let i = 0; i < WARM_CLAIMS; i++) {
        await conn`begin`;
        await conn`select count(*) from public.claim_devices(${
          servers[claimer]
        }::uuid, ${CLAIM_BATCH})`;
        await conn`rollback`;
      }
    }));
    await afterWarmUp?.();
    const started = performance.now();
    await Promise.all(conns.map(async (conn, claimer) => {
      const mine = servers.filter((_, i) => i % CLAIMERS === claimer);
      for (const server of mine) {
        const rows = await conn`
          select device_id from public.claim_devices(${server}::uuid, ${CLAIM_BATCH}) where claimed`;
        calls++;
        if (rows.length === 0) break;
        for (const row of rows) claimedIds.push(row.device_id as string);
      }
    }));
    const seconds = (performance.now() - started) / 1000;
    for (const conn of conns) conn.release();
    const [left] = await sql`select count(*)::int as n from device_assignment.orphaned_devices`;
    const [audit] = await sql`
      select count(*)::int as n from (
        select device_id from public.device_assignment_events where reason = 'claimed'
        group by device_id having count(*) > 1) t`;
    return {
      claimed: claimedIds.length,
      seconds,
      perSecond: claimedIds.length / seconds,
      duplicates: claimedIds.length - new Set(claimedIds).size + Number(audit.n),
      leftOrphaned: Number(left.n),
      calls,
    };
  } finally {
    await pool.end();
    await sql.unsafe(`
      update public.devices d
         set status = 'disconnected', assigned_server_id = null, assigned_at = null,
             connecting_since = null, assignment_epoch = 1
       where d.id in (select id from public.bench_orphan_pool);
      truncate public.device_assignment_events;
    `);
    await recomputeLoads(sql);
  }
}

/**
 * Where a claim's time goes: one more claim run, like the timed ones, with
 * pg_stat_statements tracking the statements inside the functions too (a
 * superuser setting, so set on the database before the claimers connect), its
 * counters reset after the warm-up. The tracking costs time of its own, so this
 * run's rate is reported beside, never instead of, the timed runs.
 */
export async function claimProfile(url: string, sql: Sql, k: number) {
  const admin = connect(asSuperuser(url), 1);
  const dbName = new URL(url).pathname.slice(1);
  try {
    const [{ schema }] = await admin`
      select extnamespace::regnamespace::text as schema
      from pg_extension where extname = 'pg_stat_statements'`;
    await admin.unsafe(`alter database ${dbName} set pg_stat_statements.track = 'all'`);
    let queue = { devices: 0, pages: 0 };
    const run = await claimRun(url, sql, k, async () => {
      const [waiting] = await admin`
        select count(*)::int as devices, count(distinct (ctid::text::point)[0])::int as pages
        from public.devices where status = 'connecting' and assigned_server_id is null`;
      queue = { devices: waiting.devices, pages: waiting.pages };
      await admin.unsafe(`select ${schema}.pg_stat_statements_reset()`);
    });
    const rows = await admin.unsafe(`
      select query, calls::int, total_exec_time, shared_blks_hit + shared_blks_read as buffers
      from ${schema}.pg_stat_statements s
      where s.dbid = (select oid from pg_database where datname = current_database())`);
    // The statements are ours: the client's call, and two inside claim_devices.
    const step = (name: ClaimStep["step"], test: (q: string) => boolean): ClaimStep => {
      const hit = rows.filter((r) => test(String(r.query).replace(/\s+/g, " ")));
      const calls = hit.reduce((n, r) => n + Number(r.calls), 0);
      if (calls === 0) {
        throw new Error(
          `claim profile: no statement is the ${name} step; did claim_devices change?`,
        );
      }
      const ms = hit.reduce((n, r) => n + Number(r.total_exec_time), 0);
      const buffers = hit.reduce((n, r) => n + Number(r.buffers), 0);
      return { step: name, calls, msPerCall: ms / calls, buffersPerCall: buffers / calls };
    };
    return {
      perSecond: run.perSecond,
      queueDevices: queue.devices,
      queuePages: queue.pages,
      steps: [
        step(
          "claim",
          (q) => q.includes("from public.claim_devices(") && q.includes("where claimed"),
        ),
        step(
          "queue lock",
          (q) =>
            q.includes("d.assigned_server_id is null") && q.includes("for update of d skip locked"),
        ),
        step("move", (q) => q.startsWith("with plan as")),
      ],
    };
  } finally {
    await admin.unsafe(`alter database ${dbName} reset pg_stat_statements.track`);
    await admin.end();
  }
}

export async function measureHealth(sql: Sql, reps: number) {
  await sql`select public.assignment_health()`;
  const wall: number[] = [];
  for (let i = 0; i < reps; i++) {
    const [ms] = await timed(() => sql`select public.assignment_health()`);
    wall.push(ms);
  }
  return summarize(wall);
}

/**
 * auto_explain, with its output sent to this client as notices, shows the
 * plans of the statements inside the SQL functions exactly as they run there.
 */
async function capturePlans(url: string, sql: Sql, k: number): Promise<Plan[]> {
  const plans: Plan[] = [];
  let scenario = "";
  const conn = connect(asSuperuser(url), 1, (notice) => {
    const message = String(notice.message ?? "");
    const match = /^duration: ([0-9.]+) ms\s+plan:\n([\s\S]*)$/.exec(message);
    if (match) plans.push({ scenario, durationMs: Number(match[1]), text: match[2] });
  });
  try {
    await conn.unsafe(`
      load 'auto_explain';
      set auto_explain.log_min_duration = 0;
      set auto_explain.log_analyze = on;
      set auto_explain.log_buffers = on;
      set auto_explain.log_nested_statements = on;
      set client_min_messages = log;
    `);
    await freshen(sql);
    scenario = "maintenance, nothing to do";
    await conn`select public.run_assignment_maintenance()`;
    scenario = "maintenance, 1% orphaned";
    await rolledBack(conn, async (tx) => {
      await tx.unsafe(`set local client_min_messages = warning; ${orphanPoolSql(k)}`);
      await tx.unsafe(`set local client_min_messages = log`);
      await tx`select public.run_assignment_maintenance()`;
    });
    // The maintenance plans above can outlast a heartbeat timeout at 1M devices.
    await freshen(sql);
    scenario = "claim_devices, 100 of the pool";
    await rolledBack(conn, async (tx) => {
      await tx.unsafe(`set local client_min_messages = warning;
        update public.devices d set status = 'connecting', assigned_server_id = null,
               connecting_since = now(), qr_code = null, qr_expires_at = null
         where d.id in (select id from public.bench_orphan_pool order by id limit ${k})`);
      await tx.unsafe(`set local client_min_messages = log`);
      await tx`select count(*) from public.claim_devices(md5('server' || 7)::uuid, ${CLAIM_BATCH})`;
    });
  } finally {
    await conn.end();
  }
  return plans;
}

export async function runSqlScale(options: ScaleOptions): Promise<ScaleReport> {
  const name = options.database ?? benchDatabaseName("bench_scale");
  const url = await createBenchDatabase(name);
  const sql = connect(url, 1);
  const results: ScaleResult[] = [];
  let plans: Plan[] = [];
  try {
    await sql.unsafe(`set jit = off`);
    await createFleet(sql);
    for (const n of options.sizes) {
      options.log(`sql: generating ${n.toLocaleString("en-US")} devices`);
      const generateSeconds = await generateDevices(sql, n);
      const [{ connecting, pool }] = await sql`
        select (select count(*)::int from public.devices where status = 'connecting') as connecting,
               (select count(*)::int from public.bench_orphan_pool) as pool`;
      const orphanCount = Math.min(Math.floor(n / 100), pool);
      const bulkCount = Math.min(BULK_ORPHANS, pool);

      options.log(`sql ${n}: idle maintenance`);
      const idle = await measureIdle(sql, options.reps.idle);
      options.log(`sql ${n}: maintenance with ${orphanCount} orphans`);
      await settle(sql);
      const orphan = await measureOrphaned(sql, orphanCount, options.reps.orphan);
      options.log(`sql ${n}: reassign_devices('inactive') of ${bulkCount}`);
      await settle(sql);
      const bulk = await measureBulk(sql, bulkCount, options.reps.bulk);
      options.log(`sql ${n}: claims, ${CLAIMERS} claimers`);
      const claims: ClaimRun[] = [];
      for (let i = 0; i < options.reps.claim; i++) {
        await settle(sql);
        claims.push(await claimRun(url, sql, Math.min(CLAIM_POOL, pool)));
      }
      options.log(`sql ${n}: where a claim's time goes`);
      await settle(sql);
      const claimSteps = await claimProfile(url, sql, Math.min(CLAIM_POOL, pool));
      options.log(`sql ${n}: assignment_health()`);
      await settle(sql);
      const health = await measureHealth(sql, options.reps.health);
      if (options.explain && n === Math.max(...options.sizes)) {
        options.log(`sql ${n}: plans`);
        plans = await capturePlans(url, sql, orphanCount);
      }
      results.push({
        devices: n,
        connecting: Number(connecting),
        generateSeconds,
        idleMs: idle.wall,
        idleReportedMs: idle.reported,
        idleNotIdle: idle.notIdle,
        orphanCount,
        orphanMs: orphan.wall,
        orphanMoved: orphan.moved,
        bulkCount,
        bulkMs: bulk.wall,
        bulkMoved: bulk.moved,
        claims,
        claimsPerSecond: summarize(claims.map((c) => c.perSecond)),
        claimProfile: claimSteps,
        healthMs: health,
      });
    }
  } finally {
    await sql.end();
    await dropBenchDatabase(name);
  }
  return { results, plans };
}

if (import.meta.main) {
  const sizes = Deno.args.length > 0 ? Deno.args.map(Number) : [10_000];
  const report = await runSqlScale({
    sizes,
    reps: { idle: 7, orphan: 3, bulk: 3, claim: 2, health: 3 },
    explain: true,
    log: (line) => console.error(line),
  });
  console.log(JSON.stringify(report, null, 2));
}
