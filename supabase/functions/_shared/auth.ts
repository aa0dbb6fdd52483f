/**
 * Who is calling: a signed-in user (their access token) or an operator (the
 * project's secret key, or on a project without one its legacy service_role
 * key). The caller comes back with an `Rpc` bound to the right database role,
 * so a handler cannot call SQL with more rights than the caller has.
 *
 * Works on every kind of project, with nothing to configure beyond what the
 * platform injects (docs: guides/functions/secrets):
 *
 * - tokens the function can verify (ES256/RS256 against SUPABASE_JWKS) are
 *   verified here by @supabase/server;
 * - HS256 tokens signed with a shared secret the function does not hold (the
 *   legacy JWT secret: on a legacy project, and during a migration) are not
 *   read at all: the RPC carries them to PostgREST, which verifies them and
 *   runs the SQL as their user (`auth.uid()`), or refuses them with 401.
 *
 * `verifyAuth` is used rather than `withSupabase`: the two run the same
 * verification, but `withSupabase` answers failures itself with its own body,
 * while the contract wants `{"error": {code, message, details}}` and our CORS
 * policy on every 401.
 *
 * Nor `createSupabaseContext`: it builds two supabase-js clients (each with its
 * auth, realtime, storage and functions clients) for every request, and that
 * churn alone kept a function process at ~150 MiB resident under load, against
 * the hosted 256 MB cap (bench/README.md, memory). The clients here are built
 * once per process, and each user's RPC carries that user's token in its own
 * Authorization header.
 */
import type { SupabaseEnv } from "@supabase/server";
import {
  createAdminClient,
  createContextClient,
  resolveEnv,
  verifyAuth,
} from "@supabase/server/core";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { ApiError } from "./http.ts";
import { type Rpc, rpcThrough, subjectNotAUser } from "./rpc.ts";

const USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export type Caller =
  /**
   * `userId` is null when the token was left to the database to verify: its
   * claims are unverified here and must not decide anything. The SQL knows
   * the user from `auth.uid()` either way.
   */
  | { kind: "user"; userId: string | null; rpc: Rpc }
  | { kind: "operator"; rpc: Rpc };

export type Authenticate = (request: Request) => Promise<Caller>;

export interface AuthOptions {
  /** Accept operators (secret key, or the legacy service_role key) besides users. */
  operators: boolean;
  /** Overrides for SUPABASE_URL, keys and JWKS; tests pass their own. */
  env?: Partial<SupabaseEnv>;
  /**
   * The legacy JWT-shaped keys the platform injects on every project
   * (SUPABASE_SERVICE_ROLE_KEY, SUPABASE_ANON_KEY; read from the environment
   * unless given). @supabase/server refuses legacy keys by design, so they
   * are matched here: the service_role key is an operator on operator
   * endpoints; neither ever identifies a user.
   */
  serviceRoleKey?: string;
  anonKey?: string;
}

export function supabaseAuth(options: AuthOptions): Authenticate {
  const serviceRoleKey = "serviceRoleKey" in options
    ? options.serviceRoleKey
    : Deno.env.get("SUPABASE_SERVICE_ROLE_KEY");
  const anonKey = "anonKey" in options ? options.anonKey : Deno.env.get("SUPABASE_ANON_KEY");
  const legacyKeys = [anonKey, serviceRoleKey].filter((key): key is string => Boolean(key));
  // Built on first use and kept for the process's life (see the module comment).
  const clients = new Map<string, SupabaseClient>();
  const client = (name: string, create: () => SupabaseClient): SupabaseClient => {
    let built = clients.get(name);
    if (!built) {
      try {
        built = create();
      } catch (error) {
        if (error instanceof ApiError) throw error;
        // A missing URL or key: the function's environment, not the caller, is at fault.
        const code = (error as { code?: unknown }).code;
        throw misconfigured(typeof code === "string" ? code : "CREATE_CLIENT_FAILED");
      }
      clients.set(name, built);
    }
    return built;
  };

  return async (request) => {
    const { data: env, error: envError } = resolveEnv(options.env);
    if (envError) throw misconfigured(envError.code);
    const apikey = request.headers.get("apikey");
    const bearer = bearerToken(request);

    if (options.operators && serviceRoleKey) {
      for (const candidate of [apikey, bearer]) {
        if (candidate && await sameSecret(candidate, serviceRoleKey)) {
          const admin = client(
            "legacy-service-role",
            () => legacyAdminClient(env.url, serviceRoleKey),
          );
          return { kind: "operator", rpc: rpcThrough(admin) };
        }
      }
    }
    // supabase-js on a legacy project sends the anon key as the bearer while
    // nobody is signed in: a valid JWT, but no user's.
    if (bearer && await isOneOf(bearer, legacyKeys)) {
      throw new ApiError("unauthorized", "An API key is not a user's access token.", {
        details: { reason: "API_KEY_NOT_A_USER_TOKEN", hint: callerHint(options.operators) },
      });
    }

    const hasSecretKeys = Object.keys(env.secretKeys).length > 0;
    // Operators first: an `apikey` that is a secret key wins even when a
    // stale user token rides along in Authorization.
    const operatorAttempt = options.operators && hasSecretKeys &&
      !!apikey?.startsWith("sb_secret_");
    if (bearer && !operatorAttempt && onlyTheDatabaseCanVerify(bearer, env.jwks)) {
      return {
        kind: "user",
        userId: null,
        rpc: rpcThrough(userClient(env), { accessToken: bearer }),
      };
    }

    const { data: ctx, error } = await verifyAuth(request, {
      // A project without secret keys (legacy) has no `secret` mode to offer;
      // asking for it would turn every refusal into a 500 "no keys configured".
      auth: options.operators && hasSecretKeys ? ["secret:*", "user"] : "user",
      env: options.env,
    });
    if (error) throw authFailure(error, options.operators);

    if (ctx.authMode === "user" && ctx.userClaims && ctx.token) {
      // Devices belong to Supabase Auth users, whose ids are UUIDs. A token
      // signed by a trusted key but naming anything else (third-party auth,
      // an empty sub) identifies nobody here; the SQL would only fail on the cast.
      if (!USER_ID.test(ctx.userClaims.id ?? "")) throw subjectNotAUser();
      return {
        kind: "user",
        userId: ctx.userClaims.id,
        rpc: rpcThrough(userClient(env), { accessToken: ctx.token }),
      };
    }
    if (ctx.authMode === "secret") {
      const keyName = ctx.keyName ?? "default";
      const admin = client(
        `secret:${keyName}`,
        () => createAdminClient({ auth: { keyName: ctx.keyName }, env: options.env }),
      );
      return { kind: "operator", rpc: rpcThrough(admin) };
    }
    throw new ApiError("unauthorized", "These credentials do not identify a user.");
  };

  /**
   * The one client every user's RPC goes through, verified here or left to
   * PostgREST: it carries the caller's token per call (see rpcThrough), with
   * the project's publishable key (or, on a project without one, the anon key:
   * the same `anon` API key in its legacy form) as `apikey`.
   */
  function userClient(env: SupabaseEnv): SupabaseClient {
    return client("user", () => createUserClient(env));
  }

  function createUserClient(env: SupabaseEnv) {
    const publishableKeys = Object.keys(env.publishableKeys).length > 0
      ? env.publishableKeys
      : anonKey
      ? { default: anonKey }
      : null;
    if (!publishableKeys) throw misconfigured("NO_PUBLISHABLE_OR_ANON_KEY");
    return createContextClient({ env: { ...env, publishableKeys } });
  }
}

function bearerToken(request: Request): string | null {
  const authorization = request.headers.get("authorization");
  return authorization?.startsWith("Bearer ") ? authorization.slice(7) || null : null;
}

/**
 * True for an HS256 token whose secret is not in SUPABASE_JWKS: the legacy
 * JWT secret (no `kid`), which the platform never publishes, or a shared-secret
 * signing key (a `kid` the JWKS does not hold as a symmetric key). Only the
 * header is read, and only to choose who verifies; nothing in it is trusted.
 */
function onlyTheDatabaseCanVerify(token: string, jwks: SupabaseEnv["jwks"]): boolean {
  const header = jwtHeader(token);
  if (header?.alg !== "HS256") return false;
  if (!jwks || jwks instanceof URL || header.kid === undefined) return true;
  return !jwks.keys.some((key) =>
    key.kty === "oct" && key.alg === "HS256" && key.kid === header.kid
  );
}

function jwtHeader(token: string): { alg?: unknown; kid?: unknown } | null {
  const [encoded, payload, signature] = token.split(".");
  if (!encoded || payload === undefined || signature === undefined) return null;
  try {
    const header = JSON.parse(atob(encoded.replaceAll("-", "+").replaceAll("_", "/")));
    return header !== null && typeof header === "object" ? header : null;
  } catch {
    return null;
  }
}

function legacyAdminClient(url: string, serviceRoleKey: string) {
  return createClient(url, serviceRoleKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
}

interface ServerError {
  code: string;
  status: number;
  message: string;
  hint?: string;
}

/** What a caller of these endpoints can actually do about a refused credential. */
function callerHint(operators: boolean): string {
  const user =
    "Send the signed-in user's access token as `Authorization: Bearer <token>`, with the publishable key in `apikey`";
  return operators ? `${user}; operators send the secret key in \`apikey\`.` : `${user}.`;
}

function misconfigured(reason: string): ApiError {
  console.log(JSON.stringify({ level: "error", event: "auth_misconfigured", reason }));
  return new ApiError(
    "server_misconfigured",
    "This function cannot check credentials: its environment is incomplete.",
    { details: { reason } },
  );
}

/**
 * @supabase/server errors carry no secret material (its docs promise it), so
 * their hint is passed on, except a hint addressed to the function's author
 * ("add … to `auth`"), which the caller cannot act on.
 */
function authFailure(error: ServerError, operators: boolean): ApiError {
  const hint = error.hint && !error.hint.includes("`auth`") ? error.hint : callerHint(operators);
  const details = { reason: error.code, hint };
  if (error.code === "JWKS_FETCH_FAILED") {
    return new ApiError(
      "database_unavailable",
      "The signing keys needed to check the token cannot be fetched right now.",
      { details },
    );
  }
  if (error.status >= 500) return misconfigured(error.code);
  return new ApiError("unauthorized", error.message.replace(/^\[@supabase\/server\]\s*/, ""), {
    details,
  });
}

async function isOneOf(given: string, keys: string[]): Promise<boolean> {
  for (const key of keys) if (await sameSecret(given, key)) return true;
  return false;
}

/** Compares digests, so the time taken says nothing about how much of the key matched. */
async function sameSecret(given: string, expected: string): Promise<boolean> {
  const encoder = new TextEncoder();
  const [a, b] = await Promise.all([
    crypto.subtle.digest("SHA-256", encoder.encode(given)),
    crypto.subtle.digest("SHA-256", encoder.encode(expected)),
  ]);
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}
