/**
 * Runs the vendored splinter lints (local/splinter/splinter.sql, see README.md
 * beside it) against one database, the way the hosted advisors see it, and
 * fails on any WARN or ERROR.
 *
 *   deno run -A local/splinter/run.ts <database-url>
 *
 * Several lints only look at the schemas the Data API exposes, which they read
 * from the `pgrst.db_schemas` setting. The hosted platform keeps that setting
 * on the `authenticator` role from the project's API settings, which
 * `supabase/config.toml` `[api] schemas` declares; without it those lints
 * silently find nothing. So the exposed schemas are taken from config.toml
 * (the one definition) and set for the lint transaction only.
 */
import postgres from "postgres";
import { parse as parseToml } from "smol-toml";

interface Finding {
  name: string;
  level: "INFO" | "WARN" | "ERROR";
  detail: string;
  cache_key: string;
}

const ROOT = new URL("../../", import.meta.url).pathname;
const FAILING_LEVELS = new Set(["WARN", "ERROR"]);

function exposedSchemas(): string {
  const config = parseToml(Deno.readTextFileSync(`${ROOT}supabase/config.toml`)) as {
    api?: { schemas?: string[] };
  };
  // `public` and `graphql_public` are exposed when config.toml names none.
  return (config.api?.schemas ?? ["public", "graphql_public"]).join(",");
}

async function runLints(url: string, schemas: string): Promise<Finding[]> {
  const lintSql = Deno.readTextFileSync(new URL("./splinter.sql", import.meta.url));
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    let findings: Finding[] = [];
    await sql.begin(async (tx) => {
      await tx`select set_config('pgrst.db_schemas', ${schemas}, true)`;
      // splinter.sql is two statements (`set local search_path`, then the
      // lints), so it goes over the simple protocol and yields two results.
      const results = await tx.unsafe(lintSql);
      findings = results.at(-1) as unknown as Finding[];
      // Read only: nothing the lints did may stay.
      throw new Rollback();
    }).catch((error) => {
      if (!(error instanceof Rollback)) throw error;
    });
    return findings;
  } finally {
    await sql.end();
  }
}

class Rollback extends Error {}

if (import.meta.main) {
  const url = Deno.args[0] ?? Deno.env.get("SUPABASE_DB_URL");
  if (!url) {
    console.error("usage: deno run -A local/splinter/run.ts <database-url>");
    Deno.exit(2);
  }
  const schemas = exposedSchemas();
  const findings = await runLints(url, schemas);
  const counts: Record<string, number> = { ERROR: 0, WARN: 0, INFO: 0 };
  for (const finding of findings) {
    counts[finding.level] = (counts[finding.level] ?? 0) + 1;
    console.log(
      `${finding.level.padEnd(5)} ${finding.name}: ${finding.detail.replaceAll("\\`", "`")}`,
    );
  }
  console.log(
    `splinter (pgrst.db_schemas=${schemas}): ${counts.ERROR} ERROR, ${counts.WARN} WARN, ${counts.INFO} INFO`,
  );
  if (findings.some((finding) => FAILING_LEVELS.has(finding.level))) Deno.exit(1);
}
