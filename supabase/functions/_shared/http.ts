/**
 * HTTP edge of both functions: CORS, the JSON error body, and the one table
 * that maps an error code to its HTTP status. Every response a function sends
 * goes through `respond`, so CORS, `Cache-Control: no-store` and
 * `X-Content-Type-Options: nosniff` (a browser renders a PNG or SVG as what its
 * Content-Type says, never as what it guesses) cannot be forgotten on an error path.
 */

/** Every error code a caller can receive, with its HTTP status (the error table in ../README.md). */
export const ERROR_STATUS = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  already_connected: 409,
  payload_too_large: 413,
  cooldown: 429,
  rate_limited: 429,
  too_many_long_polls: 429,
  reassignment_budget_exhausted: 429,
  no_active_servers: 503,
  database_unavailable: 503,
  // Not the caller's fault: the function itself is misconfigured or hit a bug.
  // Answered without a stack or any upstream text.
  server_misconfigured: 500,
  internal_error: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** Seconds a client should wait before retrying, per code, when the cause gives no better value. */
const DEFAULT_RETRY_AFTER_SECONDS: Partial<Record<ErrorCode, number>> = {
  cooldown: 5,
  rate_limited: 60,
  no_active_servers: 5,
  database_unavailable: 5,
};

/** An error that is a value: a code from ERROR_STATUS, a message for humans, optional details. */
export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly details: unknown;
  readonly retryAfterSeconds: number | null;
  readonly allow: readonly string[] | null;

  constructor(
    code: ErrorCode,
    message: string,
    options: { details?: unknown; retryAfterMs?: number | null; allow?: readonly string[] } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.details = options.details ?? null;
    this.allow = options.allow ?? null;
    const fallback = DEFAULT_RETRY_AFTER_SECONDS[code] ?? null;
    this.retryAfterSeconds = typeof options.retryAfterMs === "number"
      ? retryAfterSeconds(options.retryAfterMs)
      : fallback;
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

/** `Retry-After` is whole seconds; never 0, so a client cannot spin on it. */
export function retryAfterSeconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

export const ALLOWED_HEADERS = "authorization, x-client-info, apikey, content-type";

/** CORS policy of one function: origins from ALLOWED_ORIGINS (comma separated, default `*`). */
export class Cors {
  readonly #origins: string[];
  readonly #methods: string;

  constructor(allowedOrigins: string | undefined, methods: readonly string[]) {
    const origins = (allowedOrigins ?? "").split(",").map((o) => o.trim()).filter(Boolean);
    this.#origins = origins.length > 0 ? origins : ["*"];
    this.#methods = [...methods, "OPTIONS"].join(", ");
  }

  headers(request: Request): Record<string, string> {
    const headers: Record<string, string> = {
      "Access-Control-Allow-Origin": this.#allowOrigin(request.headers.get("origin")),
      "Access-Control-Allow-Headers": ALLOWED_HEADERS,
      "Access-Control-Allow-Methods": this.#methods,
      // Browsers hide every other header from scripts; clients need these two.
      "Access-Control-Expose-Headers": "retry-after, content-type",
      "Access-Control-Max-Age": "86400",
    };
    if (!this.#origins.includes("*")) headers["Vary"] = "Origin";
    return headers;
  }

  /** An explicit list echoes a listed origin; any other origin gets the first one, which the browser rejects. */
  #allowOrigin(origin: string | null): string {
    if (this.#origins.includes("*")) return "*";
    if (origin && this.#origins.includes(origin)) return origin;
    return this.#origins[0];
  }
}

/** Builds responses for one request: CORS, no-store and nosniff on every one. */
export class Responder {
  readonly #cors: Record<string, string>;

  constructor(cors: Cors, request: Request) {
    this.#cors = cors.headers(request);
  }

  respond(body: BodyInit | null, status: number, headers: Record<string, string> = {}): Response {
    return new Response(body, {
      status,
      headers: {
        ...this.#cors,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        ...headers,
      },
    });
  }

  json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
    return this.respond(JSON.stringify(body), status, {
      "Content-Type": "application/json; charset=utf-8",
      ...headers,
    });
  }

  preflight(): Response {
    return this.respond(null, 204);
  }

  error(error: ApiError): Response {
    const headers: Record<string, string> = {};
    if (error.retryAfterSeconds !== null) headers["Retry-After"] = String(error.retryAfterSeconds);
    if (error.allow) headers["Allow"] = [...error.allow, "OPTIONS"].join(", ");
    return this.json(
      { error: { code: error.code, message: error.message, details: error.details } },
      error.status,
      headers,
    );
  }
}

/** Largest request body either function accepts. */
export const MAX_BODY_BYTES = 16 * 1024;

/**
 * Reads a JSON object body of at most MAX_BODY_BYTES. The declared length is
 * checked first and the stream is counted too, since chunked bodies have none.
 * An empty body is `{}`, so `invoke()` without a body reaches validation.
 */
export async function readJsonBody(request: Request): Promise<Record<string, unknown>> {
  rejectDeclaredOversize(request);
  if (!request.body) return {};

  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const text = new TextDecoder().decode(concat(chunks, size)).trim();
  if (text === "") return {};

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ApiError("invalid_request", "The request body is not valid JSON.", {
      details: { hint: "Send a JSON object with Content-Type: application/json." },
    });
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new ApiError("invalid_request", "The request body must be a JSON object.");
  }
  return parsed as Record<string, unknown>;
}

/** Refuses a body by its declared length, before anything is read or verified. */
export function rejectDeclaredOversize(request: Request): void {
  if (Number(request.headers.get("content-length") ?? "0") > MAX_BODY_BYTES) throw tooLarge();
}

function tooLarge(): ApiError {
  return new ApiError(
    "payload_too_large",
    `The request body is larger than ${MAX_BODY_BYTES} bytes.`,
    {
      details: { max_bytes: MAX_BODY_BYTES },
    },
  );
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

export function methodNotAllowed(method: string, allow: readonly string[]): ApiError {
  return new ApiError("method_not_allowed", `${method} is not allowed here.`, {
    details: { allow: [...allow, "OPTIONS"] },
    allow,
  });
}

/**
 * Turns anything thrown by a handler into a response. Unknown errors become a
 * bare 500: their text may hold upstream details, so only their class name is logged.
 */
export function errorToResponse(
  responder: Responder,
  error: unknown,
  log: (line: Record<string, unknown>) => void,
): Response {
  if (error instanceof ApiError) {
    if (error.status >= 500) log({ level: "error", code: error.code });
    return responder.error(error);
  }
  log({
    level: "error",
    code: "internal_error",
    error: error instanceof Error ? error.name : typeof error,
  });
  return responder.error(new ApiError("internal_error", "Something went wrong on our side."));
}

/** One structured log line; callers pass codes and ids only, never credentials or SQL. */
export function logLine(fn: string): (line: Record<string, unknown>) => void {
  return (line) => console.log(JSON.stringify({ fn, ...line }));
}
