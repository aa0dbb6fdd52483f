/**
 * supabase/schemas/ is the database as it stands now; supabase/migrations/ is
 * how a project gets there. This keeps the two in step with Supabase's own
 * diff engine, @supabase/pg-delta (what `supabase db diff` runs in Docker):
 *
 *   deno run -A local/schema.ts apply <db>        the schema files into <db>, in config.toml's order
 *   deno run -A local/schema.ts check             fails when schemas/ and migrations/ differ
 *   deno run -A local/schema.ts migration <name>  writes the next migration: migrations/ → schemas/
 *
 * Both sides are built in throwaway Supabase-shaped databases of the running
 * local cluster (local/db.sh create-db): one from the schema files, one from
 * the migrations through `supabase db push`. pg_cron lives only in the
 * `postgres` database (cron.database_name), so the schedule is compared there,
 * applied over the installed one inside a transaction that is rolled back.
 */
import { parse as parseToml } from "smol-toml";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const SUPABASE = `${ROOT}/supabase`;
const PGDELTA = `${ROOT}/node_modules/.bin/pgdelta`;

function run(cmd: string, args: string[], opts: { quiet?: boolean } = {}) {
  const out = new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
    .outputSync();
  const text = new TextDecoder().decode(out.stdout);
  const err = new TextDecoder().decode(out.stderr);
  if (!out.success && !opts.quiet) {
    throw new Error(`${cmd} ${args.join(" ")} exited with ${out.code}\n${text}${err}`);
  }
  return { code: out.code, text, err };
}
const db = (...args: string[]) => run(`${ROOT}/local/db.sh`, args).text.trim();

/** The schema files, in the order config.toml's [db.migrations] schema_paths lists them. */
export async function schemaFiles(): Promise<string[]> {
  const config = parseToml(await Deno.readTextFile(`${SUPABASE}/config.toml`)) as {
    db?: { migrations?: { schema_paths?: string[] } };
  };
  const patterns = config.db?.migrations?.schema_paths ?? [];
  if (patterns.length === 0) throw new Error("config.toml lists no [db.migrations] schema_paths");
  const files: string[] = [];
  for (const pattern of patterns) {
    const matched = expand(pattern);
    if (matched.length === 0) throw new Error(`schema_paths entry ${pattern} matches no file`);
    for (const file of matched.sort()) if (!files.includes(file)) files.push(file);
  }
  return files;
}

/** A schema_paths entry, relative to supabase/: a file, or a folder's files matched by `*` in the name. */
function expand(pattern: string): string[] {
  const path = `${SUPABASE}/${pattern.replace(/^\.\//, "")}`;
  const slash = path.lastIndexOf("/");
  const [dir, name] = [path.slice(0, slash), path.slice(slash + 1)];
  const re = new RegExp(`^${name.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}$`);
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile && re.test(e.name)).map((e) =>
      `${dir}/${e.name}`
    );
  } catch {
    return [];
  }
}

export async function apply(database: string) {
  for (const file of await schemaFiles()) {
    run(`${ROOT}/local/db.sh`, [
      "psql",
      "-d",
      database,
      "-q",
      "-c",
      "set client_min_messages = warning",
      "-f",
      file,
    ]);
  }
}

/** Two throwaway databases: <prefix>_schemas from schemas/, <prefix>_migrations from migrations/. */
async function buildBoth(prefix: string) {
  const names = { schemas: `${prefix}_schemas`, migrations: `${prefix}_migrations` };
  try {
    db("create-db", names.schemas);
    await apply(names.schemas);
    db("create-db", names.migrations);
    db("push", names.migrations);
  } catch (error) {
    dropBoth(names);
    throw error;
  }
  return names;
}
function dropBoth(names: { schemas: string; migrations: string }) {
  for (const name of [names.schemas, names.migrations]) {
    run(`${ROOT}/local/db.sh`, [
      "psql-admin",
      "-c",
      `drop database if exists "${name}" with (force)`,
    ]);
  }
}

/**
 * The pg_cron jobs the migrations installed, against the jobs after the
 * schedule file is applied over them, in `postgres`: equal when the file
 * schedules the same jobs and applying it again duplicates none.
 */
function scheduleDifference(files: string[]): string | null {
  const query =
    "select jobname || ' ' || schedule || ' ' || command from cron.job where jobname like 'device-assignment-%' order by jobname";
  const installed = run(`${ROOT}/local/db.sh`, ["psql", "-At", "-c", query], { quiet: true });
  if (installed.code !== 0) return null; // no pg_cron on this server (PostgreSQL 17 here)
  const scheduled = files.filter((f) => /cron\.schedule/.test(Deno.readTextFileSync(f)));
  const fromSchemas = run(`${ROOT}/local/db.sh`, [
    "psql",
    "-At",
    "-c",
    "begin",
    ...scheduled.flatMap((f) => ["-f", f]),
    "-c",
    query,
    "-c",
    "rollback",
  ]).text.split("\n").filter((l) => l.startsWith("device-assignment-")).join("\n");
  return fromSchemas === installed.text.trim()
    ? null
    : `pg_cron jobs from migrations:\n${installed.text}\nfrom schemas:\n${fromSchemas}`;
}

/** pgdelta's difference between the two databases, or null when there is none. */
function difference(names: { schemas: string; migrations: string }): string | null {
  const diff = run(PGDELTA, [
    "diff",
    "--source",
    db("url", names.schemas),
    "--desired",
    db("url", names.migrations),
    "--profile",
    "supabase",
  ]);
  return diff.text.trim() === "No differences found." ? null : diff.text;
}

async function check() {
  const names = await buildBoth(`schema_check_${Deno.pid}`);
  let same = false;
  try {
    const files = await schemaFiles();
    console.log(
      `schemas: ${files.length} files; migrations: ${
        [...Deno.readDirSync(`${SUPABASE}/migrations`)].length
      } files`,
    );
    const diff = difference(names);
    console.log(
      diff ? `pgdelta diff, schemas → migrations:\n${diff}` : "pgdelta diff: no differences",
    );
    const schedule = scheduleDifference(files);
    console.log(schedule ?? "pg_cron schedule: the same (or no pg_cron on this server)");
    same = !diff && !schedule;
  } finally {
    dropBoth(names);
  }
  if (!same) Deno.exit(1);
}

async function migration(name: string) {
  if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`migration name ${name}: use a-z, 0-9 and _`);
  const names = await buildBoth(`schema_next_${Deno.pid}`);
  const dir = await Deno.makeTempDir();
  try {
    run(PGDELTA, [
      "plan",
      "--source",
      db("url", names.migrations),
      "--desired",
      db("url", names.schemas),
      "--profile",
      "supabase",
      "--renames",
      "off",
      "--out",
      `${dir}/plan.json`,
    ]);
    const render = run(PGDELTA, [
      "render",
      "--plan",
      `${dir}/plan.json`,
      "--out",
      `${dir}/next.sql`,
      ...(Deno.env.get("ALLOW_DROPS") === "1" ? ["--allow-drops"] : []),
    ], { quiet: true });
    if (render.code === 3) {
      console.log("schemas/ and migrations/ are the same: no migration written");
      return;
    }
    if (render.code !== 0) {
      throw new Error(
        `pgdelta render exited with ${render.code}: ${render.err.trim()}\n(a plan that drops needs ALLOW_DROPS=1)`,
      );
    }
    const segments = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".sql"))
      .sort();
    const stamp = new Date().toISOString().replace(/\D/g, "").slice(0, 14);
    segments.forEach((segment, i) => {
      const version = String(BigInt(stamp) + BigInt(i));
      const target = `${SUPABASE}/migrations/${version}_${name}${
        segments.length > 1 ? `_${i + 1}` : ""
      }.sql`;
      Deno.writeTextFileSync(
        target,
        `-- Generated by \`make migration NAME=${name}\` (pgdelta plan, migrations/ → schemas/).\n` +
          `-- Review it; add what a diff cannot see (data, backfills) by hand.\n\n` +
          Deno.readTextFileSync(`${dir}/${segment}`),
      );
      console.log(`wrote ${target.slice(ROOT.length + 1)}`);
    });
  } finally {
    dropBoth(names);
    await Deno.remove(dir, { recursive: true });
  }
  // What the plan could not express (a default grant it did not revoke, say)
  // shows up at once, not at the next make test.
  const after = await buildBoth(`schema_next_${Deno.pid}`);
  let left: string | null = null;
  try {
    left = difference(after);
    console.log(
      left
        ? `with it, migrations/ still differ from schemas/; edit the migration by hand:\n${left}`
        : "with it, migrations/ build what schemas/ defines",
    );
  } finally {
    dropBoth(after);
  }
  if (left) Deno.exit(1);
}

if (import.meta.main) {
  const [command, arg] = Deno.args;
  if (command === "apply" && arg) await apply(arg);
  else if (command === "check") await check();
  else if (command === "migration" && arg) await migration(arg);
  else {
    console.error("usage: local/schema.ts apply <db> | check | migration <name>");
    Deno.exit(2);
  }
}
