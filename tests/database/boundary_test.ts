/**
 * The SQL–TypeScript boundary, checked against the catalog: every RPC the
 * package, the functions, the CLI and the demo call exists, with the argument
 * names they pass and every argument they must pass; the columns they read
 * from a set-returning function are columns it returns; every heading of
 * docs/sql-api.md is a real signature; the package's list of statuses is the
 * database's. Reads the catalog directly (SUPABASE_DB_URL, else the local stack).
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { DEVICE_STATUSES, FAILURE_CLASSES } from "@device-qr/backend";

const DB_URL = Deno.env.get("SUPABASE_DB_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres";
const ROOT = new URL("../..", import.meta.url).pathname;
/** Where the database is called from: through supabase-js `rpc()` or a wrapper of it. */
const CALLERS = ["packages/backend/src", "supabase/functions", "cli", "local/demo", "worker"];

interface SqlFunction {
  name: string;
  args: { name: string; type: string; hasDefault: boolean }[];
  result: string;
  columns: string[];
}

async function catalog(): Promise<Map<string, SqlFunction>> {
  const sql = postgres(DB_URL, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql`
      select p.proname as name, p.pronargs as nargs, p.pronargdefaults as ndefaults,
             coalesce(p.proargnames, '{}') as arg_names,
             coalesce(p.proargmodes::text[], '{}') as arg_modes,
             array(select format_type(t, null) from unnest(p.proargtypes) t) as in_types,
             pg_get_function_result(p.oid) as result
      from pg_proc p
      where p.pronamespace = 'public'::regnamespace
        and exists (select from pg_proc i where i.pronamespace = 'device_assignment'::regnamespace
                                             and i.proname = p.proname)`;
    const out = new Map<string, SqlFunction>();
    for (const row of rows) {
      const names = row.arg_names as string[], modes = row.arg_modes as string[];
      const inNames = names.filter((_, i) => !modes.length || ["i", "b", "v"].includes(modes[i]));
      const columns = names.filter((_, i) => modes[i] === "t");
      out.set(row.name, {
        name: row.name,
        args: inNames.map((name, i) => ({
          name,
          type: (row.in_types as string[])[i],
          hasDefault: i >= row.nargs - row.ndefaults,
        })),
        result: row.result,
        columns,
      });
    }
    return out;
  } finally {
    await sql.end();
  }
}

function* sources(dir: string): Generator<string> {
  for (const entry of Deno.readDirSync(`${ROOT}${dir}`)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory && entry.name !== "node_modules") yield* sources(path);
    else if (/\.m?ts$/.test(entry.name) && !/_test\.ts$/.test(entry.name)) yield path;
  }
}

interface Call {
  file: string;
  fn: string;
  args: string[];
  reads: string[];
}

/**
 * Calls as the code writes them: `rpc("name", { p_a: …, p_b: … })`, `call<Row[]>("name", {…})`
 * (the row type's fields are what it reads), or an `args` object built just before.
 */
function calls(known: Set<string>): Call[] {
  const found: Call[] = [];
  for (const dir of CALLERS) {
    for (const file of sources(dir)) {
      const text = Deno.readTextFileSync(`${ROOT}${file}`);
      const re = /(?:rpc|call)\s*(<[\s\S]*?>)?\(\s*"([a-z_]+)"\s*(?:,\s*(\{[^{}]*\}|[a-zA-Z]+))?/g;
      for (const m of text.matchAll(re)) {
        const [, generic, fn, argText] = m;
        if (!known.has(fn) && !/^[a-z]+_[a-z_]+$/.test(fn)) continue;
        let body = argText ?? "{}";
        if (/^[a-zA-Z]+$/.test(body)) {
          const declared = text.slice(0, m.index).match(
            new RegExp(`const ${body}\\s*=([^;]*);[^;]*$`),
          );
          body = declared?.[1] ?? "";
        }
        const args = [...new Set([...body.matchAll(/\b(p_[a-z_]+)\s*:/g)].map((a) => a[1]))];
        const reads = generic && /\}\[\]\s*>$/.test(generic)
          ? [...generic.matchAll(/\b([a-z_]+)\??:/g)].map((r) => r[1])
          : [];
        found.push({ file, fn, args, reads });
      }
    }
  }
  return found;
}

const functions = await catalog();

/** What is wrong with each call, against the catalog. */
function problemsOf(found: Call[]): string[] {
  const problems: string[] = [];
  for (const call of found) {
    const fn = functions.get(call.fn);
    if (!fn) {
      problems.push(`${call.file}: ${call.fn} is no public function of ours`);
      continue;
    }
    for (const arg of call.args) {
      if (!fn.args.some((a) => a.name === arg)) {
        problems.push(`${call.file}: ${call.fn} has no argument ${arg}`);
      }
    }
    for (const arg of fn.args) {
      if (!arg.hasDefault && !call.args.includes(arg.name)) {
        problems.push(`${call.file}: ${call.fn} needs ${arg.name}`);
      }
    }
    for (const column of call.reads) {
      if (!fn.columns.includes(column)) {
        problems.push(`${call.file}: ${call.fn} returns no column ${column}`);
      }
    }
  }
  return problems;
}

Deno.test("every RPC the code calls exists, with the arguments it passes and must pass", () => {
  const found = calls(new Set(functions.keys()));
  assert.ok(found.length >= 15, `found only ${found.length} calls: is the scan still matching?`);
  const called = new Set(found.map((c) => c.fn));
  for (const fn of ["claim_devices", "server_heartbeat", "get_device_qr", "reassign_devices"]) {
    assert.ok(called.has(fn), `the scan found no call of ${fn}`);
  }
  assert.ok(found.some((c) => c.fn === "claim_devices" && c.reads.includes("device_id")));
  assert.deepEqual(problemsOf(found), []);
});

Deno.test("a wrong argument name, a missing argument and an unknown column are each reported", () => {
  const problems = problemsOf([
    {
      file: "x.ts",
      fn: "publish_device_qr",
      args: ["p_device_id", "p_server_id", "p_epoch", "p_qr_code", "p_expires_at"],
      reads: [],
    },
    { file: "x.ts", fn: "claim_devices", args: ["p_limit"], reads: ["device_id", "resume_token"] },
    { file: "x.ts", fn: "claim_all_devices", args: [], reads: [] },
  ]);
  assert.deepEqual(problems, [
    "x.ts: publish_device_qr has no argument p_qr_code",
    "x.ts: publish_device_qr needs p_qr",
    "x.ts: claim_devices needs p_server_id",
    "x.ts: claim_devices returns no column resume_token",
    "x.ts: claim_all_devices is no public function of ours",
  ]);
});

const TYPE_ALIASES: Record<string, string> = {
  int: "integer",
  timestamptz: "timestamp with time zone",
  bool: "boolean",
};
const normalType = (t: string) => TYPE_ALIASES[t] ?? t;

Deno.test("every heading of docs/sql-api.md is a real signature, and every API function has one", () => {
  const doc = Deno.readTextFileSync(`${ROOT}docs/sql-api.md`);
  const headings = [...doc.matchAll(/^### `([a-z_]+)\((.*)\) → (.+)`$/gm)];
  assert.ok(headings.length >= 15, `only ${headings.length} signature headings`);
  const problems: string[] = [];
  for (const [, name, argText, result] of headings) {
    const fn = functions.get(name);
    if (!fn) {
      problems.push(`${name}: no such function`);
      continue;
    }
    const args = argText ? argText.split(/,\s*(?=p_)/) : [];
    const documented = args.map((a) => {
      const m = a.match(/^(p_[a-z_]+) ([a-z\[\]]+)( default .+)?$/);
      return m ? `${m[1]} ${normalType(m[2])}${m[3] ? " default" : ""}` : `unparsed: ${a}`;
    });
    const real = fn.args.map((a) => `${a.name} ${a.type}${a.hasDefault ? " default" : ""}`);
    if (documented.join(", ") !== real.join(", ")) {
      problems.push(`${name}: documented (${documented.join(", ")}), is (${real.join(", ")})`);
    }
    const setof = result.match(/^setof \((.*)\)$/);
    if (setof) {
      const cols = setof[1].split(/,\s*/).map((c) => c.split(" ")[0]);
      if (cols.join(",") !== fn.columns.join(",")) {
        problems.push(`${name}: documented columns ${cols}, returns ${fn.columns}`);
      }
    } else if (normalType(result) !== fn.result) {
      problems.push(`${name}: documented → ${result}, returns ${fn.result}`);
    }
  }
  const documented = new Set(headings.map((h) => h[1]));
  for (const name of functions.keys()) {
    if (!documented.has(name)) problems.push(`${name}: no heading in docs/sql-api.md`);
  }
  assert.deepEqual(problems, []);
});

Deno.test("the package's DEVICE_STATUSES are the statuses the database lets a server report", async () => {
  const sql = postgres(DB_URL, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql`select device_assignment.statuses('reportable') as statuses`;
    assert.deepEqual([...DEVICE_STATUSES].sort(), [...row.statuses].sort());
  } finally {
    await sql.end();
  }
});

Deno.test("the package's FAILURE_CLASSES are the database's failure classes", async () => {
  const sql = postgres(DB_URL, { max: 1, onnotice: () => {} });
  try {
    const rows = await sql`select code from device_assignment.failure_classes() order by code`;
    assert.deepEqual([...FAILURE_CLASSES].sort(), rows.map((r) => r.code));
  } finally {
    await sql.end();
  }
});
