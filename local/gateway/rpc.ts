/**
 * `POST /rest/v1/rpc/<function>` with PostgREST's semantics, and nothing else
 * of PostgREST.
 *
 * Like PostgREST, one transaction per request: the role and the request GUCs
 * (`request.jwt.claims`, `request.method`, `request.path`, `request.headers`)
 * are set transaction-locally, the impersonated role's own settings (e.g. its
 * `statement_timeout`) are applied, and the named JSON arguments are typed by
 * the function's declared parameter types through `json_to_record`, so no
 * client value is ever spliced into SQL. Identifiers come from pg_catalog.
 */
import type { Sql } from "postgres";
import type { Credential } from "./credentials.ts";
import {
  databaseErrorBody,
  httpStatusForSqlState,
  isDatabaseError,
  PGRST,
  type PostgrestErrorBody,
} from "./postgrest_errors.ts";

const EXPOSED_SCHEMA = "public";
const SEARCH_PATH = "public, extensions";
const ANON_ROLE = "anon";
/** Role settings PostgREST (v12+) applies when it impersonates a role. */
const ROLE_SETTINGS = new Set([
  "statement_timeout",
  "lock_timeout",
  "idle_in_transaction_session_timeout",
  "work_mem",
  "plan_cache_mode",
]);

interface Param {
  name: string | null;
  type: string;
  hasDefault: boolean;
}

interface Routine {
  qname: string;
  returnsSet: boolean;
  returnsVoid: boolean;
  params: Param[];
}

export interface RpcResult {
  status: number;
  body: string | null;
  headers?: Record<string, string>;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function errorResult(
  [status, body]: [number, PostgrestErrorBody],
  extra: Record<string, string> = {},
): RpcResult {
  return {
    status,
    body: JSON.stringify(body),
    headers: { "proxy-status": `PostgREST; error=${body.code}`, ...extra },
  };
}

/** Overloads of `public.<name>` with their input parameters, from pg_catalog. */
async function findRoutines(sql: Sql, name: string): Promise<Routine[]> {
  const rows = await sql<
    {
      qname: string;
      returnsSet: boolean;
      returnsVoid: boolean;
      defaults: number;
      params: { name: string | null; type: string }[];
    }[]
  >`
    select quote_ident(n.nspname) || '.' || quote_ident(p.proname) as qname,
           p.proretset as "returnsSet",
           p.prorettype = 'pg_catalog.void'::regtype as "returnsVoid",
           p.pronargdefaults as defaults,
           coalesce((
             select json_agg(json_build_object('name', nullif(a.name, ''), 'type', format_type(a.type, null)) order by a.ord)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]), p.proargmodes, p.proargnames)
                  with ordinality as a(type, mode, name, ord)
             where coalesce(a.mode, 'i') in ('i', 'b', 'v')
           ), '[]'::json) as params
    from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = ${EXPOSED_SCHEMA} and p.proname = ${name} and p.prokind = 'f'`;
  return rows.map((row) => ({
    qname: row.qname,
    returnsSet: row.returnsSet,
    returnsVoid: row.returnsVoid,
    params: row.params.map((param, index) => ({
      ...param,
      hasDefault: index >= row.params.length - row.defaults,
    })),
  }));
}

function isSingleJsonParam(routine: Routine): boolean {
  return routine.params.length === 1 && routine.params[0].name === null &&
    ["json", "jsonb"].includes(routine.params[0].type);
}

/** PostgREST's overload resolution for named arguments. */
function callable(routine: Routine, keys: string[]): boolean {
  const named = new Set(routine.params.map((param) => param.name).filter((name) => name !== null));
  return keys.every((key) => named.has(key)) &&
    routine.params.every((param) =>
      param.hasDefault || (param.name !== null && keys.includes(param.name))
    );
}

function buildCall(routine: Routine, keys: string[], wholeBody: boolean): string {
  let from: string;
  if (wholeBody) {
    from = `${routine.qname}($1::text::${routine.params[0].type}) as _r`;
  } else if (keys.length === 0) {
    from = `${routine.qname}() as _r`;
  } else {
    const params = routine.params.filter((param) =>
      param.name !== null && keys.includes(param.name)
    );
    const columns = params.map((param) => `${quoteIdent(param.name!)} ${param.type}`).join(", ");
    const args = params
      .map((param) => `${quoteIdent(param.name!)} => _args.${quoteIdent(param.name!)}`)
      .join(", ");
    from =
      `json_to_record($1::text::json) as _args(${columns}), lateral ${routine.qname}(${args}) as _r`;
  }
  if (routine.returnsVoid) return `select null::text as body from ${from}`;
  if (routine.returnsSet) return `select coalesce(json_agg(_r), '[]')::text as body from ${from}`;
  return `select to_json(_r)::text as body from ${from}`;
}

let roleSettingsCache: { at: number; byRole: Map<string, [string, string][]> } | null = null;

async function roleSettings(sql: Sql, role: string): Promise<[string, string][]> {
  if (!roleSettingsCache || Date.now() - roleSettingsCache.at > 5_000) {
    const rows = await sql<{ role: string; setting: string }[]>`
      select r.rolname as role, unnest(s.setconfig) as setting
      from pg_catalog.pg_db_role_setting s
      join pg_catalog.pg_roles r on r.oid = s.setrole
      where s.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = current_database()))
      order by s.setdatabase`;
    const byRole = new Map<string, [string, string][]>();
    for (const { role: name, setting } of rows) {
      const [key, ...value] = setting.split("=");
      if (!ROLE_SETTINGS.has(key)) continue;
      byRole.set(name, [...(byRole.get(name) ?? []), [key, value.join("=")]]);
    }
    roleSettingsCache = { at: Date.now(), byRole };
  }
  return roleSettingsCache.byRole.get(role) ?? [];
}

export async function callRpc(
  sql: Sql,
  request: Request,
  name: string,
  credential: Credential,
): Promise<RpcResult> {
  if (request.method !== "POST") return errorResult(PGRST.invalidRpcMethod(request.method));
  const profile = request.headers.get("content-profile");
  if (profile !== null && profile !== EXPOSED_SCHEMA) {
    return errorResult(PGRST.unacceptableSchema(profile));
  }

  const text = await request.text();
  let args: unknown;
  try {
    args = text.trim() === "" ? {} : JSON.parse(text);
  } catch {
    return errorResult(PGRST.invalidBody("Empty or invalid json"));
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    return errorResult(
      PGRST.invalidBody("The request body must be a JSON object of named arguments"),
    );
  }
  const keys = Object.keys(args);
  const authed = credential.role !== ANON_ROLE;

  try {
    const routines = await findRoutines(sql, name);
    let candidates = routines.filter((routine) => callable(routine, keys));
    let wholeBody = false;
    if (candidates.length === 0) {
      candidates = routines.filter(isSingleJsonParam);
      wholeBody = candidates.length > 0;
    }
    if (candidates.length === 0) return errorResult(PGRST.noRpc(name, keys));
    if (candidates.length > 1) {
      return errorResult(
        PGRST.ambiguousRpc(
          candidates.map((routine) =>
            `${routine.qname}(${
              routine.params.map((p) => `${p.name ?? ""} => ${p.type}`).join(", ")
            })`
          ),
        ),
      );
    }

    const routine = candidates[0];
    const headers = Object.fromEntries(request.headers);
    const settings = await roleSettings(sql, credential.role);
    const gucs: [string, string][] = [
      ["search_path", SEARCH_PATH],
      ["role", credential.role],
      ["request.jwt.claims", JSON.stringify(credential.claims)],
      ["request.method", request.method],
      ["request.path", `/rpc/${name}`],
      ["request.headers", JSON.stringify(headers)],
      ["request.cookies", "{}"],
      ...settings,
    ];
    const body = await sql.begin(async (tx) => {
      // Pipelined: the settings and the call travel together, in this order.
      const [, rows] = await Promise.all([
        tx`select set_config(name, value, true)
           from unnest(${gucs.map(([key]) => key)}::text[], ${
          gucs.map(([, value]) => value)
        }::text[])
                with ordinality as guc(name, value, position)
           order by position`,
        tx.unsafe<{ body: string | null }[]>(
          buildCall(routine, keys, wholeBody),
          keys.length > 0 || wholeBody ? [JSON.stringify(args)] : [],
        ),
      ]);
      return rows.length > 0 ? rows[0].body : "null";
    });
    if (routine.returnsVoid) return { status: 204, body: null };
    return { status: 200, body: body ?? "null" };
  } catch (error) {
    if (isDatabaseError(error)) {
      const status = httpStatusForSqlState(error.code, error.message, authed);
      return errorResult(
        [status, databaseErrorBody(error)],
        status === 401 ? { "www-authenticate": "Bearer" } : {},
      );
    }
    const message = error instanceof Error ? error.message : String(error);
    return errorResult(PGRST.connection(message));
  }
}
