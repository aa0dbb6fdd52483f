/**
 * What PostgREST reads from a request to `/rpc/<function>` before it touches
 * the database: the method, the schema profile, `Prefer`, `Accept`, the query
 * string and the body.
 *
 * PostgREST understands far more than this gateway implements (filters,
 * `select`, CSV, `Prefer: count=…`, HEAD, …). A request that asks for one of
 * those answers 400 PGRST127 "Feature not implemented", naming the feature, so
 * a caller that relies on it fails here instead of getting a different answer
 * than the platform would give. What PostgREST itself refuses is refused with
 * PostgREST's own error.
 *
 * Sources (PostgREST, src/library/PostgREST/): ApiRequest.hs (methods),
 * ApiRequest/QueryParams.hs (reserved query parameters, GET arguments),
 * ApiRequest/Preferences.hs (Prefer), MediaType.hs (Accept), Plan.hs
 * (`callReadPlan`, `findProc`).
 */
import { PGRST, type PostgrestErrorBody } from "./postgrest_errors.ts";

export const EXPOSED_SCHEMA = "public";

export interface RpcInvocation {
  /** GET runs the function in a read-only transaction whatever its volatility. */
  method: "POST" | "GET";
  /** Named arguments: the JSON body (POST) or the query string (GET). */
  args: Record<string, unknown>;
}

type Refusal = [number, PostgrestErrorBody];

export function isRefusal(value: RpcInvocation | Refusal): value is Refusal {
  return Array.isArray(value);
}

/** Prefer values PostgREST knows (Preferences.hs) that this gateway does not act on. */
const KNOWN_PREFERENCES = [
  "return=",
  "count=",
  "resolution=",
  "missing=",
  "tx=",
  "timezone=",
  "max-affected=",
];
const ACCEPTED_PREFERENCES = new Set(["handling=lenient", "handling=strict"]);

/**
 * `Prefer` as PostgREST splits it: every header, comma-separated, trimmed.
 * Unknown preferences are ignored unless `handling=strict` (then PGRST122).
 */
function checkPreferences(request: Request): Refusal | null {
  const preferences = (request.headers.get("prefer") ?? "")
    .split(",")
    .map((value) => value.trim())
    .filter((value) => value !== "");
  const strict = preferences.includes("handling=strict");
  const unknown: string[] = [];
  for (const preference of preferences) {
    if (ACCEPTED_PREFERENCES.has(preference)) continue;
    if (KNOWN_PREFERENCES.some((prefix) => preference.startsWith(prefix))) {
      return PGRST.notImplemented(`Prefer: ${preference}`);
    }
    unknown.push(preference);
  }
  return strict && unknown.length > 0 ? PGRST.invalidPreferences(unknown) : null;
}

/**
 * Content negotiation for a function returning JSON (MediaType.hs,
 * `decodeMediaType`): the first acceptable type by quality wins. JSON and
 * `*∕*` are served; the other types PostgREST could produce for an RPC are
 * not implemented here; when none is acceptable, PostgREST's 406 PGRST107.
 */
function checkAccept(request: Request): Refusal | null {
  const header = request.headers.get("accept");
  if (header === null || header.trim() === "") return null;
  const ranges = header.split(",").map((part, index) => {
    const [type, ...params] = part.split(";").map((piece) => piece.trim());
    const param = (name: string) =>
      params.find((p) => p.toLowerCase().startsWith(`${name}=`))?.split("=")[1]?.trim();
    const q = Number(param("q") ?? "1");
    return { raw: part.trim(), type: type.toLowerCase(), nulls: param("nulls"), q, index };
  }).filter((range) => range.type !== "" && !(range.q <= 0))
    .sort((a, b) => b.q - a.q || a.index - b.index);
  for (const { type, nulls, raw } of ranges) {
    if (type === "application/json" || type === "*/*") return null;
    if (["application/vnd.pgrst.array+json", "application/vnd.pgrst.array"].includes(type)) {
      if (nulls !== "stripped") return null;
      return PGRST.notImplemented(`Accept: ${raw}`);
    }
    if (
      [
        "application/vnd.pgrst.object+json",
        "application/vnd.pgrst.object",
        "text/csv",
        "application/geo+json",
        "application/vnd.pgrst.plan",
        "application/vnd.pgrst.plan+text",
        "application/vnd.pgrst.plan+json",
      ].includes(type)
    ) {
      return PGRST.notImplemented(`Accept: ${raw}`);
    }
  }
  return PGRST.unacceptableMediaType(ranges.map((range) => range.raw));
}

/** Query parameters PostgREST reserves (QueryParams.hs); the last dot-separated word counts. */
function isReservedParam(key: string): boolean {
  const lastWord = key.split(".").at(-1)!;
  return ["select", "columns", "on_conflict"].includes(key) ||
    ["order", "limit", "offset", "and", "or"].includes(lastWord);
}

/**
 * Reads and checks an RPC request. Returns the invocation, or the refusal
 * PostgREST (or, for what is not implemented, this gateway) answers.
 */
export async function readRpcRequest(request: Request): Promise<RpcInvocation | Refusal> {
  const method = request.method;
  if (method === "HEAD") {
    return PGRST.notImplemented("HEAD on /rpc (rpc(fn, args, { head: true }))");
  }
  if (method !== "POST" && method !== "GET") return PGRST.invalidRpcMethod(method);

  // PostgREST reads the schema from Accept-Profile on GET and Content-Profile otherwise.
  const profile = request.headers.get(method === "GET" ? "accept-profile" : "content-profile");
  if (profile !== null && profile !== EXPOSED_SCHEMA) return PGRST.unacceptableSchema(profile);

  const refusal = checkPreferences(request) ?? checkAccept(request);
  if (refusal) return refusal;

  const query = new URL(request.url).searchParams;
  const keys = [...query.keys()];
  if (method === "GET") {
    const reserved = keys.find(isReservedParam);
    if (reserved !== undefined) {
      return PGRST.notImplemented(`the "${reserved}" query parameter`);
    }
    if (new Set(keys).size !== keys.length) {
      return PGRST.notImplemented("repeated query parameters (variadic arguments)");
    }
    // On GET every other parameter is an argument, its text typed by the
    // function's parameter type. (PostgREST would read `key=op.value` as a
    // filter on the result; filters are not implemented.)
    return { method, args: Object.fromEntries(query) };
  }
  if (keys.length > 0) {
    // On POST the query string shapes the result: select, filters, order, limit.
    return PGRST.notImplemented(`the "${keys[0]}" query parameter on POST /rpc`);
  }

  const contentType = request.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
  if (contentType !== undefined && contentType !== "" && contentType !== "application/json") {
    return PGRST.notImplemented(`Content-Type: ${contentType} (only application/json bodies)`);
  }
  const text = await request.text();
  let args: unknown;
  try {
    args = text.trim() === "" ? {} : JSON.parse(text);
  } catch {
    return PGRST.invalidBody("Empty or invalid json");
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    return PGRST.invalidBody("The request body must be a JSON object of named arguments");
  }
  return { method, args: args as Record<string, unknown> };
}
