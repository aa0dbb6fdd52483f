/**
 * The benchmarks of this bundle, in one command.
 *
 *   deno run -A bench/run.ts           full run (duration in bench/README.md): writes
 *                                      bench/results/REPORT.md and its SVG charts
 *   deno run -A bench/run.ts --quick   smoke run (< 60 s) for `make test`: the same
 *                                      code paths at 10k devices and short loads;
 *                                      writes test-results/bench/REPORT.md and
 *                                      fails on a correctness problem (errors,
 *                                      a device claimed twice, ≠ 1 RPC per request,
 *                                      get-device-qr restarting or over the
 *                                      hosted memory cap), never on a speed figure
 *
 * Options: --only=sql,peers,cost,failover,session,store,memory (sections to run; the
 * quick run leaves out session unless named; store, about 5 s, is in it),
 * --out=<dir>.
 *
 * Needs the local database (local/db.sh start); it works only in databases of
 * its own (bench_scale, bench_http, bench_failover, bench_session, bench_store),
 * dropped at the end, and
 * in a private gateway on a free port, so tests running against the shared
 * stack are not disturbed.
 */
import { type FailoverOptions, runFailover } from "./failover.ts";
import { connect, databaseUrl, dropAbandonedBenchDatabases, REPO } from "./lib/pg.ts";
import { type BenchResults, type Environment, renderReport } from "./report.ts";
import { memoryProblems, runMemory } from "./memory.ts";
import { runRequestCost } from "./request_cost.ts";
import { runSessionFailover } from "./session_failover.ts";
import { runSessionStore, storeProblems } from "./session_store.ts";
import { runPeers } from "./peers.ts";
import { runSqlScale } from "./sql_scale.ts";

const args = new Set(Deno.args);
const quick = args.has("--quick");
const only = Deno.args.find((a) => a.startsWith("--only="))?.slice(7).split(",") ??
  (quick
    ? ["sql", "peers", "cost", "failover", "store", "memory"]
    : ["sql", "peers", "cost", "failover", "session", "store", "memory"]);
const outDir = Deno.args.find((a) => a.startsWith("--out="))?.slice(6) ??
  (quick ? `${REPO}/test-results/bench` : `${REPO}/bench/results`);
const started = performance.now();
const log = (line: string) =>
  console.error(`[bench ${((performance.now() - started) / 1000).toFixed(1)}s] ${line}`);

async function text(command: string, ...commandArgs: string[]): Promise<string> {
  try {
    const { stdout } = await new Deno.Command(command, { args: commandArgs, cwd: REPO }).output();
    return new TextDecoder().decode(stdout).trim();
  } catch {
    return "unknown";
  }
}

async function environment(): Promise<Omit<Environment, "durationSeconds" | "loadAfter">> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const meminfo = await Deno.readTextFile("/proc/meminfo");
  const sql = connect(databaseUrl("postgres"));
  const [{ version }] = await sql`select version()`;
  await sql.end();
  const imports = JSON.parse(await Deno.readTextFile(`${REPO}/deno.json`)).imports as Record<
    string,
    string
  >;
  const packages: Record<string, string> = {};
  for (const name of ["@supabase/supabase-js", "@supabase/server", "postgres", "zod", "qrcode"]) {
    packages[name] = imports[name]?.replace(/^npm:.*@/, "") ?? "?";
  }
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    mode: quick ? "quick" : "full",
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    memoryGiB: Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0) / 1024 / 1024,
    kernel: await text("uname", "-sr"),
    loadBefore: (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" "),
    deno: Deno.version.deno,
    postgres: String(version).split(" on ")[0],
    supabaseCli: await text(`${REPO}/node_modules/.bin/supabase`, "--version"),
    packages,
    commit: await text("git", "rev-parse", "--short", "HEAD"),
  };
}

for (const name of await dropAbandonedBenchDatabases()) {
  log(`dropped ${name}, left by an interrupted run`);
}
const env = await environment();
const results: BenchResults = {
  env: { ...env, durationSeconds: 0, loadAfter: "" },
  requestCost: null,
  sqlScale: null,
  failover: null,
  sessionFailover: null,
  sessionStore: null,
  peers: null,
  memory: null,
};

if (only.includes("sql")) {
  results.sqlScale = await runSqlScale({
    sizes: quick ? [10_000] : [10_000, 100_000, 1_000_000],
    reps: quick
      ? { idle: 5, orphan: 2, bulk: 2, claim: 1, health: 2 }
      : { idle: 15, orphan: 5, bulk: 5, claim: 3, health: 5 },
    explain: true,
    log,
  });
}
if (only.includes("peers")) {
  // The queues people pick instead, at the sizes the SQL section measured claims at.
  results.peers = await runPeers({
    sizes: quick ? [10_000] : [10_000, 100_000, 1_000_000],
    reps: quick ? 1 : 3,
    log,
  });
}
if (only.includes("cost")) {
  results.requestCost = await runRequestCost({
    concurrencies: [1, 16, 64],
    reps: quick ? 1 : 3,
    secondsPerRun: quick ? 0.8 : 4,
    statementSamples: quick ? 20 : 200,
    log,
  });
}
if (only.includes("failover")) {
  const options: FailoverOptions = quick
    ? { sizes: [10], paths: ["polling"], runs: 1, log }
    : { sizes: [10, 100, 1000], paths: ["polling", "maintenance"], runs: 3, log };
  results.failover = await runFailover(options);
}
if (only.includes("session")) {
  results.sessionFailover = await runSessionFailover({
    sizes: quick ? [10] : [100, 1000],
    runs: quick ? 1 : 2,
    log,
  });
}
if (only.includes("store")) {
  results.sessionStore = await runSessionStore({ sessions: quick ? 10 : 50, log });
}
if (only.includes("memory")) {
  results.memory = await runMemory({
    requests: quick ? 2_000 : 100_000,
    concurrency: 16,
    sampleMs: 250,
    steadySamples: 40,
    coldStarts: quick ? 1 : 3,
    log,
  });
}

results.env.durationSeconds = (performance.now() - started) / 1000;
results.env.loadAfter = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(
  " ",
);
const { markdown, charts } = renderReport(results);
await Deno.mkdir(outDir, { recursive: true });
await Deno.writeTextFile(`${outDir}/REPORT.md`, markdown);
for (const [name, svg] of Object.entries(charts)) {
  await Deno.writeTextFile(`${outDir}/${name}`, svg);
}
// The raw figures, for re-rendering or comparing runs (bench/results/raw/ is not committed).
await Deno.mkdir(`${outDir}/raw`, { recursive: true });
await Deno.writeTextFile(`${outDir}/raw/results.json`, JSON.stringify(results, null, 2) + "\n");
log(`wrote ${outDir}/REPORT.md`);

// The smoke run is a test: it fails on wrong behaviour, not on slow figures.
// Memory over the hosted cap is wrong behaviour there: the function would be restarted.
const problems: string[] = results.memory ? memoryProblems(results.memory) : [];
for (const p of results.peers ?? []) {
  for (const r of p.runs) {
    if (r.duplicates > 0 || r.fetched === 0) {
      problems.push(`${p.peer}, ${p.waiting} waiting: ${r.fetched} taken, ${r.duplicates} twice`);
    }
  }
}
if (results.sessionStore) problems.push(...storeProblems(results.sessionStore));
for (const cell of results.requestCost?.cells ?? []) {
  const errors = cell.runs.reduce((s, r) => s + r.errors, 0);
  if (errors > 0) {
    problems.push(`${errors} failed requests to ${cell.endpoint}@${cell.concurrency}`);
  }
}
for (const s of results.requestCost?.statements ?? []) {
  if (Math.abs(s.rpcPerRequest - 1) > 0.005) {
    problems.push(`${s.endpoint}: ${s.rpcPerRequest} RPC statements per request`);
  }
}
for (const r of results.sqlScale?.results ?? []) {
  for (const c of r.claims) {
    if (c.duplicates > 0) {
      problems.push(`${r.devices} devices: ${c.duplicates} devices claimed twice`);
    }
    if (c.leftOrphaned > 0) problems.push(`${r.devices} devices: ${c.leftOrphaned} left orphaned`);
  }
  if (r.orphanMoved !== r.orphanCount) {
    problems.push(`${r.devices} devices: maintenance moved ${r.orphanMoved} of ${r.orphanCount}`);
  }
  if (r.bulkMoved !== r.bulkCount) {
    problems.push(`${r.devices} devices: reassign_devices moved ${r.bulkMoved} of ${r.bulkCount}`);
  }
}
for (const row of results.failover?.rows ?? []) {
  if (row.path === "polling" && row.recovered < row.total) {
    problems.push(`failover K=${row.k}: ${row.total - row.recovered} devices never recovered`);
  }
}
for (const row of results.sessionFailover?.rows ?? []) {
  if (row.connected < row.total) {
    problems.push(`session failover K=${row.k}: ${row.total - row.connected} never connected`);
  }
  if (row.neededQr > 0) {
    problems.push(`session failover K=${row.k}: ${row.neededQr} devices needed a QR`);
  }
}
if (problems.length > 0) {
  console.error(`bench: FAILED\n  ${problems.join("\n  ")}`);
  Deno.exit(1);
}
console.error(`bench: ok in ${results.env.durationSeconds.toFixed(1)} s`);
