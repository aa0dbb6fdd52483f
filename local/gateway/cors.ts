/**
 * CORS headers for every response the gateway itself makes: errors, 401s and
 * preflights included (the hosted gateway's 401 famously lacks them, which a
 * browser reports as a network error instead of the real status).
 */
const DEFAULT_ALLOWED_HEADERS = "authorization, x-client-info, apikey, content-type";

export function allowedOrigins(): string[] {
  const raw = Deno.env.get("ALLOWED_ORIGINS")?.trim();
  if (!raw) return ["*"];
  return raw.split(",").map((origin) => origin.trim()).filter((origin) => origin !== "");
}

export function corsHeaders(request: Request, origins = allowedOrigins()): Record<string, string> {
  const origin = request.headers.get("origin");
  // One origin per response: the caller's when it is allowed, else the first allowed one.
  const allowOrigin = origins.includes("*")
    ? "*"
    : origin !== null && origins.includes(origin)
    ? origin
    : origins[0] ?? "*";
  return {
    "access-control-allow-origin": allowOrigin,
    "access-control-allow-headers": request.headers.get("access-control-request-headers") ??
      DEFAULT_ALLOWED_HEADERS,
    "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "access-control-expose-headers": "content-range, retry-after, x-supabase-api-version",
    "access-control-max-age": "3600",
    ...(allowOrigin === "*" ? {} : { vary: "Origin" }),
  };
}
