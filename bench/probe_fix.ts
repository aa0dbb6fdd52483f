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
import { fmt, summarize } from "./lib/stats.ts";
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

interface Samples {
  idle: number[];
  steadyClaim: number[];
  orphan: number[];
  bulk: number[];
  claims: number[];
  health: number[];
  duplicates: number;
}

type Figure = Exclude<keyof Samples, "duplicates">;

/** A worker's poll when there is nothing to take: what 1,000 servers do every few seconds. */
async function measureSteadyClaim(sql: Sql): Promise<number[]> {
  await freshen(sql);
  const times: number[] = [];
  for (let i = 0; i < 35; i++) {
    const started = performance.now();
    await sql`select count(*) from public.claim_devices(md5('server' || ${i % 1000})::uuid, 100)`;
    if (i >= 10) times.push(performance.now() - started);
  }
  return times;
}

/** One block of every figure, half the repetitions of bench/sql_scale.ts. */
async function measure(url: string, sql: Sql, k: number, bulk: number, into: Samples) {
  // Each block starts from a vacuumed table, so a block is not slowed by the
  // dead rows the previous one's claim runs left behind.
  await settle(sql);
  into.idle.push(...(await measureIdle(sql, 8)).raw);
  into.steadyClaim.push(...(await measureSteadyClaim(sql)));
  into.orphan.push(...(await measureOrphaned(sql, k, 3)).raw);
  into.bulk.push(...(await measureBulk(sql, bulk, 3)).raw);
  for (let i = 0; i < 2; i++) {
    await settle(sql);
    const run = await claimRun(url, sql, bulk);
    into.claims.push(run.perSecond);
    into.duplicates += run.duplicates + run.leftOrphaned;
  }
  const health = await measureHealth(sql, 3);
  into.health.push(health.median);
}

const empty = (): Samples => ({
  idle: [],
  steadyClaim: [],
  orphan: [],
  bulk: [],
  claims: [],
  health: [],
  duplicates: 0,
});

/** The migrations' own definitions of the functions the fix replaces. */
const MIGRATED = [
  `${REPO}/supabase/migrations/20261128190300_server_api.sql`,
  `${REPO}/supabase/migrations/20261128190400_operator_api.sql`,
];

async function useVariant(sql: Sql, variant: "migrated" | "fix"): Promise<void> {
  if (variant === "fix") await sql.file(`${REPO}/bench/fixtures/proposed_fix.sql`);
  else for (const file of MIGRATED) await sql.file(file);
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
    const before = empty();
    const after = empty();
    // Alternating blocks (as migrated, fix, as migrated, fix): drift on this
    // shared machine then hits both alike.
    for (const variant of ["migrated", "fix", "migrated", "fix"] as const) {
      log(`${devices}: measuring, ${variant}`);
      await useVariant(sql, variant);
      await measure(url, sql, k, bulk, variant === "fix" ? after : before);
    }
    if (largest) profiles = { k, before: profileBefore, after: await profile(url, sql, k) };
    duplicates += before.duplicates + after.duplicates;

    const n = devices.toLocaleString("en-US");
    const row = (label: string, figure: Figure, unit: string, higherIsBetter = false) => {
      const b = summarize(before[figure]);
      const f = summarize(after[figure]);
      const gain = higherIsBetter ? f.median / b.median : b.median / f.median;
      return `| ${n} | ${label} | ${fmt(b.median)}${unit} (${fmt(b.min)}–${fmt(b.max)}) | ${
        fmt(f.median)
      }${unit} (${fmt(f.min)}–${fmt(f.max)}) | ${fmt(gain)}× |`;
    };
    rows.push(
      row("maintenance, nothing to do", "idle", " ms"),
      row("claim_devices(server, 100), nothing to take", "steadyClaim", " ms"),
      row(`maintenance, ${k.toLocaleString("en-US")} orphaned`, "orphan", " ms"),
      row(`reassign_devices('inactive') of ${bulk.toLocaleString("en-US")}`, "bulk", " ms"),
      row("claims/s, 8 claimers", "claims", "", true),
      row("assignment_health()", "health", " ms"),
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
  }: the data and measurements of bench/sql_scale.ts (1,000 live servers, 20 dead ones, 1% connecting), as migrated (the migrations in this checkout) and after applying [bench/fixtures/proposed_fix.sql](../fixtures/proposed_fix.sql) to a scratch database, in one run per size, measured in alternating blocks (as migrated, fix, as migrated, fix; the table vacuumed before each) so that drift on this shared machine hits both alike. Median (min–max) over both blocks of a variant: idle n=16, claim with nothing to take n=50, orphaned and bulk n=6 (rolled back), claim runs n=4, health n=2 (block medians). Wall clock at the client; "gain" is how many times faster (claims: more per second).`,
  "",
  "| devices | figure | as migrated | with the fix | gain |",
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
