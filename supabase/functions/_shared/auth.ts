/**
 * Who is calling: a signed-in user (their JWT, verified against the project's
 * JWKS by @supabase/server) or an operator (the project's secret key). The
 * caller comes back with an `Rpc` bound to the right database role, so a
 * handler cannot call SQL with more rights than the caller has.
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
import { createAdminClient, createContextClient, verifyAuth } from "@supabase/server/core";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { ApiError } from "./http.ts";
import { type Rpc, rpcThrough } from "./rpc.ts";

const USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export type Caller =
  | { kind: "user"; userId: string; rpc: Rpc }
  | { kind: "operator"; rpc: Rpc };

export type Authenticate = (request: Request) => Promise<Caller>;

export interface AuthOptions {
  /** Accept operators (secret key) besides users. */
  operators: boolean;
  /** Overrides for SUPABASE_URL, keys and JWKS; tests pass their own. */
  env?: Partial<SupabaseEnv>;
  /**
   * The legacy JWT-shaped service-role key (SUPABASE_SERVICE_ROLE_KEY), still
   * injected by the platform. @supabase/server refuses legacy keys by design,
   * so it is matched here, and only for operator endpoints.
   */
  serviceRoleKey?: string;
}

export function supabaseAuth(options: AuthOptions): Authenticate {
  let userClient: SupabaseClient | null = null;
  const adminClients = new Map<string, SupabaseClient>();
  const build = (create: () => SupabaseClient) => {
    try {
      return create();
    } catch (error) {
      // A missing URL or key: the function's environment, not the caller, is at fault.
      const code = (error as { code?: unknown }).code;
      throw authFailure(
        {
          code: typeof code === "string" ? code : "CREATE_CLIENT_FAILED",
          status: 500,
          message: "",
        },
        options.operators,
      );
    }
  };

  return async (request) => {
    if (options.operators && options.serviceRoleKey) {
      const operator = await legacyServiceRole(request, options.serviceRoleKey, options.env?.url);
      if (operator) return operator;
    }

    const { data: ctx, error } = await verifyAuth(request, {
      // Operators first: an `apikey` that is a secret key wins even when a
      // stale user token rides along in Authorization.
      auth: options.operators ? ["secret:*", "user"] : "user",
      env: options.env,
    });
    if (error) throw authFailure(error, options.operators);

    if (ctx.authMode === "user" && ctx.userClaims && ctx.token) {
      // Devices belong to Supabase Auth users, whose ids are UUIDs. A token
      // signed by a trusted key but naming anything else (third-party auth,
      // an empty sub) identifies nobody here; the SQL would only fail on the cast.
      if (!USER_ID.test(ctx.userClaims.id ?? "")) {
        throw new ApiError("unauthorized", "The token's subject is not a user of this project.", {
          details: {
            reason: "SUBJECT_NOT_A_USER_ID",
            hint: "Sign in with Supabase Auth; its access tokens carry the user's UUID in sub.",
          },
        });
      }
      userClient ??= build(() => createContextClient({ env: options.env }));
      return {
        kind: "user",
        userId: ctx.userClaims.id,
        rpc: rpcThrough(userClient, { accessToken: ctx.token }),
      };
    }
    if (ctx.authMode === "secret") {
      const keyName = ctx.keyName ?? "default";
      let admin = adminClients.get(keyName);
      if (!admin) {
        admin = build(() =>
          createAdminClient({ auth: { keyName: ctx.keyName }, env: options.env })
        );
        adminClients.set(keyName, admin);
      }
      return { kind: "operator", rpc: rpcThrough(admin) };
    }
    throw new ApiError("unauthorized", "These credentials do not identify a user.");
  };
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
  if (error.status >= 500) {
    console.log(
      JSON.stringify({ level: "error", event: "auth_misconfigured", reason: error.code }),
    );
    return new ApiError(
      "server_misconfigured",
      "This function cannot check credentials: its environment is incomplete.",
      { details: { reason: error.code } },
    );
  }
  return new ApiError("unauthorized", error.message.replace(/^\[@supabase\/server\]\s*/, ""), {
    details,
  });
}

async function legacyServiceRole(
  request: Request,
  serviceRoleKey: string,
  url: string | undefined,
): Promise<Caller | null> {
  const apikey = request.headers.get("apikey");
  const authorization = request.headers.get("authorization");
  const bearer = authorization?.startsWith("Bearer ") ? authorization.slice(7) : null;
  const candidates = [apikey, bearer].filter((v): v is string => Boolean(v));
  for (const candidate of candidates) {
    if (await sameSecret(candidate, serviceRoleKey)) {
      const supabaseUrl = url ?? Deno.env.get("SUPABASE_URL");
      if (!supabaseUrl) {
        throw new ApiError("server_misconfigured", "SUPABASE_URL is not set for this function.");
      }
      const client = createClient(supabaseUrl, serviceRoleKey, {
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      });
      return { kind: "operator", rpc: rpcThrough(client) };
    }
  }
  return null;
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
