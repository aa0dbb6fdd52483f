/**
 * Who may command the fleet's control API (kill, partition, add, scan…):
 * only the page the fleet itself served. Two checks, because each alone has a
 * hole:
 *
 * - the browser's own word on where a request comes from (`Sec-Fetch-Site`,
 *   `Origin`), which stops a cross-site page in any current browser, but not
 *   a page of another port of the same host where the browser omits both,
 *   nor a non-browser client;
 * - a token made at random when the fleet starts, which only its own page (or
 *   whoever started the fleet) learns, sent in the `x-fleet-control-token`
 *   header: a cross-site form or `fetch` cannot set that header without a
 *   CORS preflight the fleet never grants, and cannot read the token.
 */

export const CONTROL_TOKEN_HEADER = "x-fleet-control-token";

/** A per-run token: 256 random bits, hex. */
export function createControlToken(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

function crossSite(request: Request, url: URL): boolean {
  const site = request.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") return true;
  const origin = request.headers.get("origin");
  return origin !== null && origin !== url.origin;
}

/** Equal-time comparison, so the token cannot be guessed byte by byte from response times. */
function sameToken(given: string, expected: string): boolean {
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(expected);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i] ?? 0) ^ b[i];
  return diff === 0;
}

/**
 * Why a state-changing control request is refused, or null when it may run.
 * The caller answers 403 with the reason.
 */
export function controlRefusal(request: Request, url: URL, token: string): string | null {
  if (crossSite(request, url)) return "the fleet obeys only pages of its own origin";
  const given = request.headers.get(CONTROL_TOKEN_HEADER);
  if (given === null || !sameToken(given, token)) {
    return `the fleet obeys only requests carrying its per-run ${CONTROL_TOKEN_HEADER} header`;
  }
  return null;
}
