/**
 * PostgREST's error responses: the SQLSTATE → HTTP status table and the
 * `{code, message, details, hint}` body. This is the one place the mapping lives.
 *
 * Source: PostgREST, src/PostgREST/Error.hs, `mapSQLtoHTTP` and the JwtError /
 * SchemaCacheError instances (github.com/PostgREST/postgrest, commit
 * 03a3ccda90ae84a4c876620abd167503ad5b8666), documented at
 * https://docs.postgrest.org/en/latest/references/errors.html. Rules are checked
 * in the order PostgREST's `case` checks them; the first match wins.
 */

export interface PostgrestErrorBody {
  code: string;
  message: string;
  details: string | null;
  hint: string | null;
}

interface Rule {
  /** An exact SQLSTATE, or a class prefix ending in `*`. */
  sqlstate: string;
  status: number | ((message: string, authed: boolean) => number);
  why: string;
}

const RULES: readonly Rule[] = [
  { sqlstate: "08*", status: 503, why: "pg connection err" },
  { sqlstate: "09*", status: 500, why: "triggered action exception" },
  { sqlstate: "0L*", status: 403, why: "invalid grantor" },
  { sqlstate: "0P*", status: 403, why: "invalid role specification" },
  { sqlstate: "23503", status: 409, why: "foreign_key_violation" },
  { sqlstate: "23505", status: 409, why: "unique_violation" },
  { sqlstate: "25006", status: 405, why: "read_only_sql_transaction" },
  {
    sqlstate: "21000",
    // pg-safeupdate's refusal is a client error; other cardinality violations are the server's.
    status: (message) => message.endsWith("requires a WHERE clause") ? 400 : 500,
    why: "cardinality_violation",
  },
  {
    sqlstate: "22023",
    // A JWT whose role does not exist (PostgREST issue #3601).
    status: (message) =>
      message.startsWith("role") && message.endsWith("does not exist") ? 401 : 400,
    why: "invalid_parameter_value",
  },
  { sqlstate: "25*", status: 500, why: "invalid tx state" },
  { sqlstate: "28*", status: 403, why: "invalid auth specification" },
  { sqlstate: "2D*", status: 500, why: "invalid tx termination" },
  { sqlstate: "38*", status: 500, why: "external routine exception" },
  { sqlstate: "39*", status: 500, why: "external routine invocation" },
  { sqlstate: "3B*", status: 500, why: "savepoint exception" },
  { sqlstate: "40*", status: 500, why: "tx rollback" },
  { sqlstate: "53400", status: 500, why: "config limit exceeded" },
  { sqlstate: "53*", status: 503, why: "insufficient resources" },
  { sqlstate: "54*", status: 500, why: "too complex" },
  { sqlstate: "55*", status: 500, why: "obj not in prereq state" },
  { sqlstate: "57P01", status: 503, why: "terminating connection due to administrator command" },
  // Not in mapSQLtoHTTP, where 57P03 falls to 500: PostgREST never surfaces it
  // as a statement error because it sees it while connecting (PGRST000, 503).
  { sqlstate: "57P03", status: 503, why: "the database system is starting up or shutting down" },
  { sqlstate: "57*", status: 500, why: "operator intervention (57014: statement timeout)" },
  { sqlstate: "58*", status: 500, why: "system error" },
  { sqlstate: "F0*", status: 500, why: "conf file error" },
  { sqlstate: "HV*", status: 500, why: "foreign data wrapper error" },
  { sqlstate: "P0001", status: 400, why: "default code for RAISE" },
  { sqlstate: "P0*", status: 500, why: "PL/pgSQL error" },
  { sqlstate: "XX*", status: 500, why: "internal error" },
  {
    sqlstate: "42883",
    status: (message) => message.startsWith("function xmlagg(") ? 406 : 404,
    why: "undefined function",
  },
  { sqlstate: "42P01", status: 404, why: "undefined table" },
  { sqlstate: "42P17", status: 500, why: "infinite recursion" },
  {
    sqlstate: "42501",
    // An anonymous caller may fix it by signing in; an authenticated one may not.
    status: (_message, authed) => authed ? 403 : 401,
    why: "insufficient privilege",
  },
  // `raise ... using errcode = 'PT409'` answers 409 (handled before the table);
  // a PT code that is not an HTTP status is the server's fault.
  { sqlstate: "PT*", status: 500, why: "PTxyz: HTTP status xyz" },
];

function matches(rule: Rule, sqlstate: string): boolean {
  return rule.sqlstate.endsWith("*")
    ? sqlstate.startsWith(rule.sqlstate.slice(0, -1))
    : sqlstate === rule.sqlstate;
}

/**
 * The HTTP status PostgREST answers a database error with. `authed` is true
 * when the request ran as a role other than the anonymous one.
 */
export function httpStatusForSqlState(sqlstate: string, message: string, authed: boolean): number {
  if (/^PT\d{3}$/.test(sqlstate)) {
    const status = Number(sqlstate.slice(2));
    if (status >= 100 && status <= 599) return status;
  }
  const rule = RULES.find((candidate) => matches(candidate, sqlstate));
  if (!rule) return 400;
  return typeof rule.status === "number" ? rule.status : rule.status(message, authed);
}

/** The shape of a database error as the `postgres` driver reports it. */
export interface DatabaseError {
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

export function isDatabaseError(error: unknown): error is DatabaseError {
  return error instanceof Error && "code" in error && typeof error.code === "string" &&
    /^[0-9A-Z]{5}$/.test(error.code);
}

export function databaseErrorBody(error: DatabaseError): PostgrestErrorBody {
  return {
    code: error.code,
    message: error.message,
    details: error.detail ?? null,
    hint: error.hint ?? null,
  };
}

/** PostgREST's own errors (PGRSTxxx). */
export const PGRST = {
  connection: (details: string): [number, PostgrestErrorBody] => [503, {
    code: "PGRST000",
    message: "Database connection error. Retrying the connection.",
    details,
    hint: null,
  }],
  invalidRpcMethod: (method: string): [number, PostgrestErrorBody] => [405, {
    code: "PGRST101",
    message: `Cannot use the ${method} method on RPC`,
    details: null,
    hint: null,
  }],
  invalidBody: (message: string): [number, PostgrestErrorBody] => [400, {
    code: "PGRST102",
    message,
    details: null,
    hint: null,
  }],
  unacceptableSchema: (schema: string): [number, PostgrestErrorBody] => [406, {
    code: "PGRST106",
    message: `Invalid schema: ${schema}`,
    details: null,
    hint: "Only the following schemas are exposed: public",
  }],
  unacceptableMediaType: (types: string[]): [number, PostgrestErrorBody] => [406, {
    code: "PGRST107",
    message: `None of these media types are available: ${types.join(", ")}`,
    details: null,
    hint: null,
  }],
  invalidPreferences: (preferences: string[]): [number, PostgrestErrorBody] => [400, {
    code: "PGRST122",
    message: "Invalid preferences given with handling=strict",
    details: `Invalid preferences: ${preferences.join(", ")}`,
    hint: null,
  }],
  /**
   * PostgREST's NotImplemented error, for what PostgREST does but this gateway
   * does not: the platform would answer differently, so nothing is ignored.
   */
  notImplemented: (feature: string): [number, PostgrestErrorBody] => [400, {
    code: "PGRST127",
    message: "Feature not implemented",
    details: `${feature} is not implemented by the local gateway`,
    hint:
      "The local gateway implements POST /rest/v1/rpc/<function> with a JSON object of named arguments (and GET with arguments in the query string), answering JSON.",
  }],
  invalidPath: (): [number, PostgrestErrorBody] => [404, {
    code: "PGRST125",
    message: "Invalid path specified in request URL",
    details: null,
    hint: "This local gateway serves only /rest/v1/rpc/<function> of PostgREST.",
  }],
  noRpc: (name: string, keys: string[]): [number, PostgrestErrorBody] => {
    const func = `public.${name}`;
    const params = keys.length === 0 ? " without parameters" : `(${keys.join(", ")})`;
    const searched = keys.length === 0
      ? " without parameters"
      : ` with parameter${keys.length > 1 ? "s" : ""} ${keys.join(", ")}`;
    return [404, {
      code: "PGRST202",
      message: `Could not find the function ${func}${params} in the schema cache`,
      details:
        `Searched for the function ${func}${searched} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.`,
      hint: null,
    }];
  },
  ambiguousRpc: (signatures: string[]): [number, PostgrestErrorBody] => [300, {
    code: "PGRST203",
    message: `Could not choose the best candidate function between: ${signatures.join(", ")}`,
    details: null,
    hint:
      "Try renaming the parameters or the function itself in the database so function overloading can be resolved",
  }],
  jwt: (message: string): [number, PostgrestErrorBody] => [401, {
    code: message === "JWT expired" ? "PGRST303" : "PGRST301",
    message,
    details: null,
    hint: null,
  }],
};
