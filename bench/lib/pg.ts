/**
 * The benchmark's own databases on the local cluster. Other engineers run
 * tests against `postgres` on the same cluster, so every benchmark works in a
 * database it creates (bootstrap + the real migrations through the Supabase
 * CLI, as local/db.sh does) and drops at the end.
 */
import postgres from "postgres";

export const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
/** The local cluster; DB_PORT is honoured like local/db.sh does. */
const PORT = Deno.env.get("DB_PORT") ?? "54322";
const CLUSTER = `postgresql://postgres:postgres@127.0.0.1:${PORT}`;

/**
 * A database name of this run's own: two benchmark runs at once (two engineers'
 * `make test`) must not drop each other's databases.
 */
export function benchDatabaseName(base: string): string {
  return `${base}_${Deno.pid}`;
}

/** Drops the databases of benchmark runs whose process is gone (an interrupted run). */
export async function dropAbandonedBenchDatabases(): Promise<string[]> {
  const admin = postgres(databaseUrl("postgres"), { max: 1, onnotice: () => {} });
  const dropped: string[] = [];
  try {
    const rows =
      await admin`select datname from pg_database where datname ~ '^bench_[a-z]+_[0-9]+$'`;
    for (const { datname } of rows) {
      const pid = Number(/_(\d+)$/.exec(datname)![1]);
      let alive = true;
      try {
        Deno.statSync(`/proc/${pid}`);
      } catch {
        alive = false;
      }
      if (!alive) {
        await admin.unsafe(`drop database if exists ${datname} with (force)`);
        dropped.push(datname);
      }
    }
  } finally {
    await admin.end();
  }
  return dropped;
}

export function databaseUrl(name: string): string {
  return `${CLUSTER}/${name}`;
}

async function run(command: string, args: string[], env: Record<string, string> = {}) {
  const { code, stdout, stderr } = await new Deno.Command(command, {
    args,
    cwd: REPO,
    env: { PGPASSWORD: "postgres", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  if (code !== 0) throw new Error(`${command} ${args.join(" ")} failed:\n${text}`);
  return text;
}

/** A fresh Supabase-shaped database without our migrations (local/db.sh create-db), for the peers. */
export async function createPlainDatabase(name: string): Promise<string> {
  await run(`${REPO}/local/db.sh`, ["create-db", name]);
  return databaseUrl(name);
}

/** A fresh database with the Supabase bootstrap and every migration applied (local/db.sh). */
export async function createBenchDatabase(name: string): Promise<string> {
  const url = await createPlainDatabase(name);
  await run(`${REPO}/local/db.sh`, ["push", name]);
  return url;
}

export async function dropBenchDatabase(name: string): Promise<void> {
  const admin = postgres(databaseUrl("postgres"), { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`drop database if exists ${name} with (force)`);
  } finally {
    await admin.end();
  }
}

/**
 * The same database as the cluster's superuser (supabase_admin, local/db.sh), for
 * observing only: loading auto_explain and its settings are superuser-only on
 * plain PostgreSQL (a hosted project preloads it and lets postgres set them
 * through supautils). Everything measured runs as postgres.
 */
export function asSuperuser(url: string): string {
  const parsed = new URL(url);
  parsed.username = "supabase_admin";
  return parsed.href;
}

export function connect(url: string, max = 1, onnotice?: (n: postgres.Notice) => void) {
  return postgres(url, {
    max,
    onnotice: onnotice ?? (() => {}),
    idle_timeout: 20,
    connection: { application_name: "bench" },
  });
}

export type Sql = postgres.Sql;
