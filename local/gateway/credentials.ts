/**
 * Turns a request's `apikey` / `Authorization` headers into the database role
 * and JWT claims the request runs with, as the platform gateway does before a
 * request reaches PostgREST:
 *
 * - `Authorization: Bearer <JWT>` wins: a user access token or a legacy
 *   `anon` / `service_role` key; the role is the token's `role` claim. Which
 *   algorithms verify is the verifier's business (./jwt.ts).
 * - otherwise the API key (`apikey` header, or an `sb_…` key as the bearer):
 *   the publishable key runs as `anon`, the secret key as `service_role`, with
 *   the claims of the matching legacy key (what the CLI's gateway substitutes).
 *
 * Which API keys exist depends on the kind of project (keys.ts, ProjectProfile):
 * `sb_…` keys are unknown to a legacy project, and a migrated project refuses
 * its disabled `anon` / `service_role` keys wherever they are sent.
 */
import {
  ANON_KEY,
  type ProjectProfile,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "./keys.ts";
import { type JwtClaims, JwtRejected, type JwtVerifier } from "./jwt.ts";

export interface Credential {
  role: string;
  claims: JwtClaims;
  /** How the caller identified itself; for logs and tests, never the token itself. */
  via: "publishable_key" | "secret_key" | "jwt";
}

export type CredentialProblem =
  | "missing"
  | "invalid_api_key"
  | "legacy_api_key_disabled"
  | "invalid_jwt"
  | "expired_jwt";

const HINTS: Record<CredentialProblem, string> = {
  missing:
    "Send the project's publishable key in the `apikey` header, and a user's access token as `Authorization: Bearer <token>`.",
  invalid_api_key:
    "Use an API key that `supabase status` (or .env.local) prints for this project: its publishable or secret key, or on a project without them its anon or service_role key.",
  legacy_api_key_disabled:
    "This project's anon and service_role keys are disabled; send its publishable or secret key (sb_…) instead.",
  expired_jwt: "Refresh the session and retry with the new access token.",
  invalid_jwt:
    "Send an access token issued by this project's Auth, signed with its JWT secret or a key in /auth/v1/.well-known/jwks.json.",
};

export class CredentialRejected extends Error {
  constructor(readonly problem: CredentialProblem, message: string) {
    super(message);
  }

  /** What the caller should do about it, for the `hint` of the error body. */
  get hint(): string {
    return HINTS[this.problem];
  }
}

const JWT_SHAPE = /^[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/;

function legacyClaims(token: string): JwtClaims {
  return JSON.parse(atob(token.split(".")[1]));
}

export function bearerToken(request: Request): string | null {
  const header = request.headers.get("authorization");
  if (header === null) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : "";
}

async function verifyJwt(verifier: JwtVerifier, token: string): Promise<Credential> {
  try {
    const claims = await verifier.verify(token);
    // PostgREST runs a token without a role claim as its anonymous role.
    return { role: typeof claims.role === "string" ? claims.role : "anon", claims, via: "jwt" };
  } catch (error) {
    if (!(error instanceof JwtRejected)) throw error;
    throw new CredentialRejected(error.expired ? "expired_jwt" : "invalid_jwt", error.message);
  }
}

/** A migrated project's disabled legacy keys are refused even though they are validly signed JWTs. */
export function refuseDisabledLegacyKey(key: string, profile: ProjectProfile): void {
  if (!profile.legacyApiKeys && (key === ANON_KEY || key === SERVICE_ROLE_KEY)) {
    throw new CredentialRejected("legacy_api_key_disabled", "Legacy API keys are disabled");
  }
}

/**
 * The platform gateway's check on Auth routes (`/auth/v1/…`): one of this
 * project's API keys is required in `apikey`, and the `Authorization` header is left for Auth
 * itself to judge.
 */
export function requireApiKey(request: Request, profile: ProjectProfile): void {
  const apikey = request.headers.get("apikey");
  if (apikey === null || apikey === "") {
    throw new CredentialRejected("missing", "No API key found in request");
  }
  if (profile.newApiKeys && (apikey === PUBLISHABLE_KEY || apikey === SECRET_KEY)) return;
  refuseDisabledLegacyKey(apikey, profile);
  if (profile.legacyApiKeys && (apikey === ANON_KEY || apikey === SERVICE_ROLE_KEY)) return;
  throw new CredentialRejected("invalid_api_key", "Invalid API key");
}

/** The role and claims of a request to the Data API (`/rest/v1`). */
export async function resolveApiCredential(
  request: Request,
  verifier: JwtVerifier,
  profile: ProjectProfile,
): Promise<Credential> {
  const apikey = request.headers.get("apikey");
  const bearer = bearerToken(request);
  if (bearer === "") {
    throw new CredentialRejected("invalid_jwt", "Authorization header is not `Bearer <token>`");
  }
  const isNewApiKey = (key: string) =>
    profile.newApiKeys && (key === PUBLISHABLE_KEY || key === SECRET_KEY);

  if (apikey !== null && !isNewApiKey(apikey)) {
    if (!JWT_SHAPE.test(apikey)) throw new CredentialRejected("invalid_api_key", "Invalid API key");
    refuseDisabledLegacyKey(apikey, profile);
    await verifyJwt(verifier, apikey);
  }

  if (bearer !== null && !bearer.startsWith("sb_")) {
    refuseDisabledLegacyKey(bearer, profile);
    return await verifyJwt(verifier, bearer);
  }

  const key = bearer ?? apikey;
  if (key === null) throw new CredentialRejected("missing", "No API key found in request");
  if (isNewApiKey(key) && key === PUBLISHABLE_KEY) {
    return { role: "anon", claims: legacyClaims(ANON_KEY), via: "publishable_key" };
  }
  if (isNewApiKey(key) && key === SECRET_KEY) {
    return { role: "service_role", claims: legacyClaims(SERVICE_ROLE_KEY), via: "secret_key" };
  }
  if (key.startsWith("sb_")) throw new CredentialRejected("invalid_api_key", "Invalid API key");
  return await verifyJwt(verifier, key);
}

/**
 * `verify_jwt = true` on a function: the platform's legacy check that the
 * bearer token is a JWT of this project. API keys (`sb_…`) are not JWTs and are
 * refused, as on the hosted platform.
 */
export async function requireJwt(request: Request, verifier: JwtVerifier): Promise<Credential> {
  const bearer = bearerToken(request);
  if (bearer === null) {
    throw new CredentialRejected("missing", "Missing authorization header");
  }
  if (bearer === "" || bearer.startsWith("sb_")) {
    throw new CredentialRejected(
      "invalid_jwt",
      "Invalid JWT: this function verifies JWTs; API keys are not JWTs (set verify_jwt = false to accept them)",
    );
  }
  return await verifyJwt(verifier, bearer);
}
