/**
 * The one way these functions reach the database: a PostgREST RPC through
 * supabase-js, and the mapping of its refusals (docs/sql-api.md, "Errors") to
 * ApiError codes. Handlers receive an `Rpc` so tests can hand them a fake.
 */
import type { SupabaseClient } from "@supabase/supabase-js";
import { ApiError, type ErrorCode } from "./http.ts";

export type RpcArgs = Record<string, unknown>;

/** Calls one public SQL function and resolves with its result, or throws an ApiError. */
export type Rpc = (name: string, args: RpcArgs, signal?: AbortSignal) => Promise<unknown>;

/** The fields of a PostgREST error body that the mapping looks at. */
export interface PostgrestFailure {
  code?: string | null;
  message?: string | null;
  details?: string | null;
}

/**
 * How long one RPC may take before the caller is told the database is
 * unavailable: above the `authenticated` role's 8 s statement timeout, so a
 * slow but working query still answers, while a stalled upstream (a database
 * restarting, a pool waiting to reconnect) gets the contract's 503.
 */
export const RPC_DEADLINE_MS = 10_000;

export interface RpcOptions {
  /**
   * The caller's access token, sent as this call's Authorization header, so
   * one client serves every user of a function process (auth.ts).
   */
  accessToken?: string;
  deadlineMs?: number;
}

export function rpcThrough(client: SupabaseClient, options: RpcOptions = {}): Rpc {
  const deadlineMs = options.deadlineMs ?? RPC_DEADLINE_MS;
  return async (name, args, signal) => {
    let result;
    try {
      const deadline = AbortSignal.timeout(deadlineMs);
      const call = client.rpc(name, args);
      // setHeader copies the builder's headers first: the shared client's own stay untouched.
      if (options.accessToken) call.setHeader("Authorization", `Bearer ${options.accessToken}`);
      result = await call.abortSignal(signal ? AbortSignal.any([signal, deadline]) : deadline);
    } catch {
      throw databaseUnavailable();
    }
    if (result.error) throw rpcError(result.status, result.error);
    return result.data;
  };
}

/** What each SQL refusal means to an HTTP caller. Codes absent here are our bug, not theirs. */
const SQL_REFUSALS: Record<string, { code: ErrorCode; message: string }> = {
  unauthorized: {
    code: "unauthorized",
    message: "The database did not accept these credentials; sign in again.",
  },
  not_found: {
    code: "not_found",
    message: "No device with this id belongs to you.",
  },
  already_connected: {
    code: "already_connected",
    message: "The device is already connected; disconnect it before pairing again.",
  },
  cooldown: {
    code: "cooldown",
    message: "Asked for this device moments ago; retry after the Retry-After delay.",
  },
  rate_limited: {
    code: "rate_limited",
    message: "Too many pairing-code requests this hour; retry after the Retry-After delay.",
  },
  too_many_long_polls: {
    code: "too_many_long_polls",
    message:
      "You already have as many long-polls waiting as allowed; retry after the Retry-After delay.",
  },
  reassignment_budget_exhausted: {
    code: "reassignment_budget_exhausted",
    message:
      "This device was reassigned on request as often as allowed this hour; retry after the Retry-After delay.",
  },
  no_active_servers: {
    code: "no_active_servers",
    message: "No backend server is live right now; the device will be picked up as soon as one is.",
  },
  invalid_argument: {
    code: "invalid_request",
    message: "The database rejected an argument.",
  },
};

/** SQLSTATE classes and PostgREST codes that mean "the database cannot be reached right now". */
function isUnavailable(status: number, code: string): boolean {
  if (status === 0 || status === 502 || status === 503 || status === 504) return true;
  if (["PGRST000", "PGRST001", "PGRST002"].includes(code)) return true;
  return code.startsWith("08") || code === "57P01" || code === "57P03" || code === "53300";
}

/** Maps one failed RPC to an ApiError; the upstream message is used only when it is a known code. */
export function rpcError(status: number, error: PostgrestFailure): ApiError {
  const code = error.code ?? "";
  const message = error.message ?? "";
  const refusal = code.startsWith("PT") ? SQL_REFUSALS[message] : undefined;
  if (refusal) {
    const details = parseDetails(error.details);
    const retryAfterMs = typeof details?.retry_after_ms === "number"
      ? details.retry_after_ms
      : null;
    return new ApiError(refusal.code, refusal.message, { details, retryAfterMs });
  }
  if (isUnavailable(status, code)) return databaseUnavailable();
  if (status === 401 || code === "PGRST301" || code === "PGRST303") {
    return new ApiError("unauthorized", "The database did not accept these credentials.", {
      details: { hint: "Sign in again to get a fresh access token." },
    });
  }
  // Every uuid argument is validated before the call, so a uuid cast that
  // fails in the database is `auth.uid()` casting the token's `sub`: a token
  // signed with the project's legacy JWT secret (verified by PostgREST, never
  // read here) that names no Supabase Auth user.
  if (code === "22P02" && message.includes("type uuid")) return subjectNotAUser();
  console.log(JSON.stringify({ level: "error", event: "rpc_failed", status, sqlstate: code }));
  return new ApiError("internal_error", "The database answered with an unexpected error.");
}

/** A validly signed token whose `sub` is not a Supabase Auth user id (a UUID). */
export function subjectNotAUser(): ApiError {
  return new ApiError("unauthorized", "The token's subject is not a user of this project.", {
    details: {
      reason: "SUBJECT_NOT_A_USER_ID",
      hint: "Sign in with Supabase Auth; its access tokens carry the user's UUID in sub.",
    },
  });
}

export function databaseUnavailable(): ApiError {
  return new ApiError(
    "database_unavailable",
    "The database cannot be reached right now; retry after the Retry-After delay.",
  );
}

/** PostgREST sends `details` as text; ours is a JSON object, anything else is dropped. */
function parseDetails(details: string | null | undefined): Record<string, unknown> | null {
  if (!details) return null;
  try {
    const parsed = JSON.parse(details);
    return parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : null;
  } catch {
    return null;
  }
}
