/**
 * The gateway's routes, as the platform's API gateway lays them out:
 *
 *   POST/GET /rest/v1/rpc/<function>       PostgREST RPC (./rpc.ts)
 *   GET  /auth/v1/.well-known/jwks.json    the project's public signing keys
 *   POST /auth/v1/token, /auth/v1/admin/users   the Auth this bundle needs (./auth.ts)
 *   *    /functions/v1/<name>[/…]          edge functions (./functions.ts)
 *   GET  /_gateway/health                  readiness, for local/gateway.sh
 *
 * Every response the gateway makes carries CORS headers; every request gets
 * one line in the request log.
 */
import type { Sql } from "postgres";
import { type AuthDeps, handleAuth } from "./auth.ts";
import { corsHeaders } from "./cors.ts";
import { CredentialRejected, resolveApiCredential } from "./credentials.ts";
import type { FunctionHost } from "./functions.ts";
import type { JwtVerifier } from "./jwt.ts";
import type { ProjectProfile } from "./keys.ts";
import { PGRST } from "./postgrest_errors.ts";
import { callRpc } from "./rpc.ts";
import type { RequestLog } from "./request_log.ts";

export interface GatewayDeps {
  sql: Sql;
  verifier: JwtVerifier;
  /** Which API keys this project accepts (PROJECT_KEYS). */
  profile: ProjectProfile;
  jwks: unknown;
  functions: FunctionHost;
  /** Auth's database pool and settings; the verifier and profile are the gateway's. */
  auth: Omit<AuthDeps, "verifier" | "profile">;
  log: RequestLog;
}

/** A gateway-made error in the contract's shape: `{error: {code, message, details}}`. */
export function errorResponse(
  request: Request,
  status: number,
  code: string,
  message: string,
  details: unknown = null,
): Response {
  return Response.json({ error: { code, message, details } }, {
    status,
    headers: { ...corsHeaders(request), "cache-control": "no-store" },
  });
}

function json(request: Request, status: number, body: string | null, headers = {}): Response {
  return new Response(body, {
    status,
    headers: {
      ...corsHeaders(request),
      ...(body === null ? {} : { "content-type": "application/json; charset=utf-8" }),
      ...headers,
    },
  });
}

async function handleRest(request: Request, path: string, deps: GatewayDeps): Promise<Response> {
  const match = /^\/rest\/v1\/rpc\/([^/]+)$/.exec(path);
  if (!match) {
    const [status, body] = PGRST.invalidPath();
    return json(request, status, JSON.stringify(body));
  }
  let credential;
  try {
    credential = await resolveApiCredential(request, deps.verifier, deps.profile);
  } catch (error) {
    if (!(error instanceof CredentialRejected)) throw error;
    const [status, body] = PGRST.jwt(error.message);
    return json(request, status, JSON.stringify({ ...body, hint: error.hint }), {
      "www-authenticate": error.problem === "missing"
        ? "Bearer"
        : `Bearer error="invalid_token", error_description=${JSON.stringify(error.message)}`,
    });
  }
  const result = await callRpc(deps.sql, request, decodeURIComponent(match[1]), credential);
  return json(request, result.status, result.body, result.headers);
}

async function route(request: Request, path: string, deps: GatewayDeps): Promise<Response> {
  if (path.startsWith("/functions/v1/")) {
    const [, name, rest] = /^\/functions\/v1\/([^/]*)(.*)$/.exec(path)!;
    return await deps.functions.handle(request, name, rest);
  }
  if (request.method === "OPTIONS") {
    return new Response(null, { status: 204, headers: corsHeaders(request) });
  }
  if (path.startsWith("/rest/v1/")) return await handleRest(request, path, deps);
  if (path === "/auth/v1/.well-known/jwks.json" || path === "/auth/v1/jwks") {
    if (request.method !== "GET" && request.method !== "POST") {
      return errorResponse(request, 405, "method_not_allowed", "Use GET");
    }
    return json(request, 200, JSON.stringify(deps.jwks), {
      "cache-control": "public, max-age=600",
    });
  }
  if (path.startsWith("/auth/v1/")) {
    const { verifier, profile } = deps;
    return await handleAuth(request, path, { ...deps.auth, verifier, profile });
  }
  if (path === "/_gateway/health") return json(request, 200, JSON.stringify({ status: "ok" }));
  return errorResponse(request, 404, "not_found", `No route for ${path}`, {
    hint:
      "This local gateway serves /rest/v1/rpc/<fn>, /functions/v1/<name>, /auth/v1/token, /auth/v1/admin/users and /auth/v1/.well-known/jwks.json",
  });
}

export function createHandler(deps: GatewayDeps): (request: Request) => Promise<Response> {
  return async (request) => {
    const started = performance.now();
    const path = new URL(request.url).pathname;
    let response: Response;
    try {
      response = await route(request, path, deps);
    } catch (error) {
      console.error(`${request.method} ${path}:`, error);
      response = errorResponse(request, 500, "gateway_error", "The local gateway failed", {
        reason: error instanceof Error ? error.message : String(error),
      });
    }
    deps.log.record(request.method, path, response.status, performance.now() - started);
    return response;
  };
}
