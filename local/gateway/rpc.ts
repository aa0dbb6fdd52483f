/**
 * `/rest/v1/rpc/<function>` with PostgREST's semantics, and nothing else of
 * PostgREST. What the request may ask for is checked in ./rpc_request.ts.
 *
 * Like PostgREST, one transaction per request (src/library/PostgREST/MainTx.hs):
 * read-only when the method is GET or the function is STABLE or IMMUTABLE
 * (Plan.hs, `callReadPlan`), so a function marked STABLE that writes fails
 * with 25006 as it does on the platform. Before the call, in PostgREST's order
 * (Query/PreQuery.hs, `txVarQuery`), everything is set transaction-locally with
 * `set_config(…, true)`: search_path, the impersonated role's own settings
 * (e.g. anon's 3 s statement_timeout), the role, the request GUCs
 * (`request.jwt.claims`, `request.method`, `request.path`, `request.headers`,
 * `request.cookies`) and the function's hoisted settings (its own
 * `set statement_timeout`). The session settings of the login role
 * (authenticator's 8 s statement and lock timeouts) stay underneath, which is
 * how service_role, with no settings of its own, gets 8 s.
 *
 * Named JSON arguments are typed by the function's declared parameter types
 * through `json_to_record`, so no client value is ever spliced into SQL.
 * Identifiers come from pg_catalog.
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
import { EXPOSED_SCHEMA, isRefusal, readRpcRequest } from "./rpc_request.ts";

const SEARCH_PATH = "public, extensions";
const ANON_ROLE = "anon";
/**
 * A function's own settings that PostgREST lifts to the transaction, so that
 * e.g. `set statement_timeout` governs the call itself: the default of
 * `db-hoisted-tx-settings` (Config.hs, `defaultHoistedAllowList`).
 */
const HOISTED_SETTINGS = ["statement_timeout", "plan_filter.statement_cost_limit"];
const ISOLATION_SETTING = "default_transaction_isolation";
// Lists travel as JSON text: postgres.js sends a JS array as a plain
// comma-joined string on a connection that has not yet loaded array types.
const HOISTED_JSON = JSON.stringify([...HOISTED_SETTINGS, ISOLATION_SETTING]);

interface Param {
  name: string | null;
  type: string;
  hasDefault: boolean;
}

interface Routine {
  qname: string;
  returnsSet: boolean;
  returnsVoid: boolean;
  /** pg_proc.provolatile: 'v'olatile, 's'table or 'i'mmutable. */
  volatility: "v" | "s" | "i";
  /** Hoisted `set` clauses of the function, as [name, value]. */
  settings: [string, string][];
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
      volatility: "v" | "s" | "i";
      settings: [string, string][];
      defaults: number;
      params: { name: string | null; type: string }[];
    }[]
  >`
    select quote_ident(n.nspname) || '.' || quote_ident(p.proname) as qname,
           p.proretset as "returnsSet",
           p.prorettype = 'pg_catalog.void'::regtype as "returnsVoid",
           p.provolatile as volatility,
           coalesce((
             select json_agg(json_build_array(split_part(c, '=', 1), substr(c, strpos(c, '=') + 1)))
             from unnest(p.proconfig) c
             where split_part(c, '=', 1) in (select json_array_elements_text(${HOISTED_JSON}::text::json))
           ), '[]'::json) as settings,
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
    volatility: row.volatility,
    settings: row.settings,
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

interface RoleSettings {
  /** Settings PostgREST applies with `set_config(name, value, true)`, in catalog order. */
  settings: [string, string][];
  /** The role's `default_transaction_isolation`, which becomes the transaction's isolation level. */
  isolation: string | null;
}

/**
 * The settings of every role the login role (authenticator) may become, read
 * as PostgREST reads them (Config/Database.hs, `queryRoleSettings`): the
 * role's database-independent settings (`alter role … set`), keeping those a
 * user may set or the login role has been granted SET on. PostgREST reads
 * them at start-up and on `NOTIFY pgrst, 'reload config'`; this gateway
 * re-reads them every 5 s so tests and operators need not restart it.
 */
let roleSettingsCache: { at: number; byRole: Map<string, RoleSettings> } | null = null;

async function roleSettings(sql: Sql, role: string): Promise<RoleSettings> {
  if (!roleSettingsCache || Date.now() - roleSettingsCache.at > 5_000) {
    const rows = await sql<{ role: string; key: string; value: string }[]>`
      with role_setting as (
        select r.rolname, unnest(r.rolconfig) as setting
        from pg_catalog.pg_auth_members m
        join pg_catalog.pg_roles r on r.oid = m.roleid
        where m.member = quote_ident(current_user)::regrole::oid
      ), kv as (
        select rolname,
               substr(setting, 1, strpos(setting, '=') - 1) as key,
               substr(setting, strpos(setting, '=') + 1) as value
        from role_setting
      )
      select kv.rolname as role, kv.key, kv.value
      from kv
      join pg_catalog.pg_settings ps on ps.name = kv.key
        and (ps.context = 'user'
             or has_parameter_privilege(quote_ident(current_user)::regrole::oid, ps.name, 'set'))`;
    const byRole = new Map<string, RoleSettings>();
    for (const { role: name, key, value } of rows) {
      const entry = byRole.get(name) ?? { settings: [], isolation: null };
      if (key === ISOLATION_SETTING) entry.isolation = value;
      else entry.settings.push([key, value]);
      byRole.set(name, entry);
    }
    roleSettingsCache = { at: Date.now(), byRole };
  }
  return roleSettingsCache.byRole.get(role) ?? { settings: [], isolation: null };
}

const ISOLATION_LEVELS: Record<string, string> = {
  "read committed": "read committed",
  "repeatable read": "repeatable read",
  serializable: "serializable",
};

/** The `begin` options: PostgREST's isolation level (function over role) and access mode. */
function transactionMode(isolation: string | null, readOnly: boolean): string {
  const level = isolation === null ? undefined : ISOLATION_LEVELS[isolation.toLowerCase()];
  return [level ? `isolation level ${level}` : "", readOnly ? "read only" : "read write"]
    .filter((part) => part !== "")
    .join(" ");
}

export async function callRpc(
  sql: Sql,
  request: Request,
  name: string,
  credential: Credential,
): Promise<RpcResult> {
  const invocation = await readRpcRequest(request);
  if (isRefusal(invocation)) return errorResult(invocation);
  const { method, args } = invocation;
  const keys = Object.keys(args);
  const authed = credential.role !== ANON_ROLE;

  try {
    const routines = await findRoutines(sql, name);
    let candidates = routines.filter((routine) => callable(routine, keys));
    let wholeBody = false;
    // Only a POSTed body can be the single unnamed json argument (Plan.hs, `findProc`).
    if (candidates.length === 0 && method === "POST") {
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
    const role = await roleSettings(sql, credential.role);
    const functionIsolation = routine.settings.find(([key]) => key === ISOLATION_SETTING);
    const gucs: [string, string][] = [
      ["search_path", SEARCH_PATH],
      // Before the role, so a setting granted to authenticator only still applies (PostgREST #3045).
      ...role.settings,
      ["role", credential.role],
      // PostgREST puts the role it switched to into the claims.
      ["request.jwt.claims", JSON.stringify({ ...credential.claims, role: credential.role })],
      ["request.method", method],
      ["request.path", `/rpc/${name}`],
      ["request.headers", JSON.stringify(headers)],
      ["request.cookies", "{}"],
      ...routine.settings.filter(([key]) => key !== ISOLATION_SETTING),
    ];
    const readOnly = method === "GET" || routine.volatility !== "v";
    const mode = transactionMode(functionIsolation?.[1] ?? role.isolation, readOnly);
    const body = await sql.begin(mode, async (tx) => {
      // Pipelined: the settings and the call travel together, in this order.
      const [, rows] = await Promise.all([
        tx`select set_config(guc ->> 0, guc ->> 1, true)
           from json_array_elements(${JSON.stringify(gucs)}::text::json)
                with ordinality as settings(guc, position)
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
