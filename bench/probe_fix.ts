/**
 * Checks the SQL fix proposed in bench/fixtures/proposed_fix.sql on a scratch
 * database (bench_probe, dropped at the end): the same data and measurements
 * as bench/sql_scale.ts, before and after applying the fix, in one run, plus
 * a per-statement profile of the maintenance pass with 1% orphaned.
 *
 *   deno run -A bench/probe_fix.ts [devices...]     (default 10,000 and 1,000,000)
 *
 * Writes bench/results/proposed-fix.md. The migrations are not touched.
 */
import {
  benchDatabaseName,
  connect,
  createBenchDatabase,
  dropBenchDatabase,
  REPO,
  type Sql,
} from "./lib/pg.ts";
import { fmt, summarize, type Summary } from "./lib/stats.ts";
import {
  claimRun,
  createFleet,
  freshen,
  generateDevices,
  measureBulk,
  measureHealth,
  measureIdle,
  measureOrphaned,
  orphanPoolSql,
  rolledBack,
  settle,
} from "./sql_scale.ts";

const log = (line: string) => console.error(`[probe] ${line}`);

interface Figures {
  idle: Summary;
  steadyClaim: Summary;
  orphan: Summary;
  bulk: Summary;
  claims: Summary;
  duplicates: number;
  health: Summary;
}

/** A worker's poll when there is nothing to take: what 1,000 servers do every few seconds. */
async function measureSteadyClaim(sql: Sql): Promise<Summary> {
  await freshen(sql);
  const times: number[] = [];
  for (let i = 0; i < 60; i++) {
    const started = performance.now();
    await sql`select count(*) from public.claim_devices(md5('server' || ${i % 1000})::uuid, 100)`;
    if (i >= 10) times.push(performance.now() - started);
  }
  return summarize(times);
}

async function measure(url: string, sql: Sql, k: number, bulk: number): Promise<Figures> {
  // Each block starts from a vacuumed table, so the second is not slowed by the
  // dead rows the first one's claim runs left behind.
  await settle(sql);
  const idle = await measureIdle(sql, 15);
  const steadyClaim = await measureSteadyClaim(sql);
  const orphan = await measureOrphaned(sql, k, 5);
  const bulkRun = await measureBulk(sql, bulk, 5);
  const runs = [];
  for (let i = 0; i < 3; i++) runs.push(await claimRun(url, sql, bulk));
  const health = await measureHealth(sql, 3);
  return {
    idle: idle.wall,
    steadyClaim,
    orphan: orphan.wall,
    bulk: bulkRun.wall,
    claims: summarize(runs.map((r) => r.perSecond)),
    duplicates: runs.reduce((s, r) => s + r.duplicates + r.leftOrphaned, 0),
    health,
  };
}

/** Time per statement inside the functions (auto_explain without ANALYZE: durations only). */
async function profile(url: string, sql: Sql, k: number): Promise<string[]> {
  const totals = new Map<string, { calls: number; ms: number }>();
  const conn = connect(url, 1, (notice) => {
    const match = /^duration: ([0-9.]+) ms\s+plan:\nQuery Text:\s*([\s\S]*?)\n/.exec(
      String(notice.message ?? ""),
    );
    if (!match) return;
    const key = match[2].replace(/\s+/g, " ").trim().slice(0, 70);
    const entry = totals.get(key) ?? { calls: 0, ms: 0 };
    entry.calls++;
    entry.ms += Number(match[1]);
    totals.set(key, entry);
  });
  try {
    await conn.unsafe(`
      load 'auto_explain';
      set auto_explain.log_min_duration = 0;
      set auto_explain.log_analyze = off;
      set auto_explain.log_nested_statements = on;
    `);
    await freshen(sql);
    await rolledBack(conn, async (tx) => {
      await tx.unsafe(orphanPoolSql(k));
      await tx.unsafe(`set local client_min_messages = log`);
      await tx`select public.run_assignment_maintenance()`;
    });
  } finally {
    await conn.end();
  }
  return [...totals.entries()]
    .sort((a, b) => b[1].ms - a[1].ms)
    .slice(0, 10)
    .map(([query, t]) => `| \`${query.replace(/\|/g, "\\|")}\` | ${t.calls} | ${fmt(t.ms)} |`);
}

const sizes = Deno.args.length > 0 ? Deno.args.map(Number) : [10_000, 1_000_000];
const name = benchDatabaseName("bench_probe");
const rows: string[] = [];
let profiles: { k: number; before: string[]; after: string[] } | null = null;
let duplicates = 0;
for (const devices of sizes) {
  const url = await createBenchDatabase(name);
  const sql = connect(url, 1);
  try {
    await sql.unsafe(`set jit = off`);
    await createFleet(sql);
    log(`generating ${devices} devices`);
    await generateDevices(sql, devices);
    const [{ pool }] = await sql`select count(*)::int as pool from public.bench_orphan_pool`;
    const k = Math.min(Math.floor(devices / 100), Number(pool));
    const bulk = Math.min(10_000, Number(pool));
    const largest = devices === Math.max(...sizes);
    const profileBefore = largest ? await profile(url, sql, k) : [];
    log(`${devices}: measuring, as migrated`);
    const before = await measure(url, sql, k, bulk);
    log(`${devices}: applying bench/fixtures/proposed_fix.sql`);
    await sql.file(`${REPO}/bench/fixtures/proposed_fix.sql`);
    await sql.unsafe(`analyze public.devices`);
    log(`${devices}: measuring, with the fix`);
    const after = await measure(url, sql, k, bulk);
    if (largest) profiles = { k, before: profileBefore, after: await profile(url, sql, k) };
    duplicates += before.duplicates + after.duplicates;

    const n = devices.toLocaleString("en-US");
    const row = (label: string, f: (x: Figures) => Summary, unit: string) =>
      `| ${n} | ${label} | ${fmt(f(before).median)}${unit} (${fmt(f(before).min)}–${
        fmt(f(before).max)
      }) | ${fmt(f(after).median)}${unit} (${fmt(f(after).min)}–${fmt(f(after).max)}) | ${
        fmt(f(before).median / f(after).median)
      }× |`;
    rows.push(
      row("maintenance, nothing to do", (x) => x.idle, " ms"),
      row("claim_devices(server, 100), nothing to take", (x) => x.steadyClaim, " ms"),
      row(`maintenance, ${k.toLocaleString("en-US")} orphaned`, (x) => x.orphan, " ms"),
      row(`reassign_devices('inactive') of ${bulk.toLocaleString("en-US")}`, (x) => x.bulk, " ms"),
      `| ${n} | claims/s, 8 claimers | ${fmt(before.claims.median)} (${fmt(before.claims.min)}–${
        fmt(before.claims.max)
      }) | ${fmt(after.claims.median)} (${fmt(after.claims.min)}–${fmt(after.claims.max)}) | ${
        fmt(after.claims.median / before.claims.median)
      }× faster |`,
      row("assignment_health()", (x) => x.health, " ms"),
    );
  } finally {
    await sql.end();
    await dropBenchDatabase(name);
  }
}

const md = [
  `# Proposed SQL fix, checked at ${
    sizes.map((n) => n.toLocaleString("en-US")).join(" and ")
  } devices`,
  "",
  `Generated by \`bench/probe_fix.ts ${sizes.join(" ")}\` on ${
    new Date().toISOString().replace(/\.\d+Z$/, "Z")
  }: the data and measurements of bench/sql_scale.ts (1,000 live servers, 20 dead ones, 1% connecting), as migrated (the migrations in this checkout) and after applying [bench/fixtures/proposed_fix.sql](../fixtures/proposed_fix.sql) to a scratch database, in one run per size. Median (min–max); idle n=15, claim with nothing to take n=50, orphaned and bulk n=5 (rolled back), claim runs n=3, health n=3. Wall clock at the client.`,
  "",
  "| devices | figure | as migrated | with the fix | speed-up |",
  "|---:|---|---:|---:|---:|",
  ...rows,
  "",
  `Devices handed out twice or left orphaned, over every claim run: ${duplicates}.`,
  "",
];
if (profiles) {
  md.push(
    `## Where the maintenance pass with ${
      profiles.k.toLocaleString("en-US")
    } orphans spends its time`,
    "",
    "auto_explain durations (no ANALYZE instrumentation) of the statements run inside one pass, top 10 by total; a statement's time includes the statements nested in it.",
    "",
    "As migrated:",
    "",
    "| statement | calls | total ms |",
    "|---|---:|---:|",
    ...profiles.before,
    "",
    "With the fix:",
    "",
    "| statement | calls | total ms |",
    "|---|---:|---:|",
    ...profiles.after,
    "",
  );
}
await Deno.writeTextFile(`${REPO}/bench/results/proposed-fix.md`, md.join("\n"));
console.log(md.join("\n"));
