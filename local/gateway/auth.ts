/**
 * The part of Supabase Auth (GoTrue) this bundle needs, and nothing more:
 *
 *   POST /auth/v1/token?grant_type=password        sign in with email and password
 *   POST /auth/v1/token?grant_type=refresh_token   rotate a refresh token
 *   POST /auth/v1/admin/users                      create a user (secret key only)
 *
 * Backend servers sign in as their own Auth users (issue 13), so the local
 * stack must hand out sessions the way a hosted project does: the same
 * response bodies, error bodies and statuses, refresh-token rotation with the
 * same reuse rules, and access tokens signed like the project's kind
 * (PROJECT_KEYS: ES256 with the signing key's `kid`, or HS256 with the legacy
 * JWT secret). Imitated from supabase/auth (read, not copied):
 *
 * - internal/api/token.go            the grant dispatch and the password grant
 * - internal/tokens/service.go       RefreshTokenGrant (v1 tokens), GenerateAccessToken
 *                                    (the claims), IssueRefreshToken, AccessTokenResponse
 * - internal/models/refresh_token.go GrantRefreshTokenSwap, RevokeTokenFamily
 * - internal/api/admin.go            adminUserCreate
 * - internal/api/auth.go, middleware.go  requireAdminCredentials, requireAdmin
 * - internal/api/errors.go, apierrors/   HTTPError, OAuthError, X-Supabase-Api-Version
 * - internal/api/mail.go             validateEmail
 *
 * Users, sessions and refresh tokens live in the `auth` schema of the local
 * database (local/sql/supabase-bootstrap.sql), which this module reaches as
 * `supabase_auth_admin`, as GoTrue does; passwords are bcrypt hashes made and
 * checked by pgcrypto's crypt(), so they are interchangeable with GoTrue's.
 * Not reproduced: phone users, identities rows, MFA, OAuth, PKCE, rate limits,
 * audit log, refresh-token algorithm v2 (hosted projects default to v1).
 */
import type { Sql, TransactionSql } from "postgres";
import { z } from "zod";
import { corsHeaders } from "./cors.ts";
import {
  bearerToken,
  CredentialRejected,
  refuseDisabledLegacyKey,
  requireApiKey,
} from "./credentials.ts";
import { JwtRejected, type JwtVerifier, mintAccessToken } from "./jwt.ts";
import { type ProjectProfile, PUBLISHABLE_KEY, SECRET_KEY } from "./keys.ts";

/** The `[auth]` settings of config.toml that these endpoints honour (the CLI's defaults). */
export interface AuthSettings {
  /** Access-token lifetime in seconds (`jwt_expiry`). */
  jwtExpiry: number;
  /** `enable_refresh_token_rotation`: reuse past the interval revokes the whole session. */
  rotation: boolean;
  /** `refresh_token_reuse_interval` in seconds: how long a rotated token may still be used. */
  reuseInterval: number;
}

export function authSettings(
  auth: {
    jwt_expiry?: number;
    enable_refresh_token_rotation?: boolean;
    refresh_token_reuse_interval?: number;
  } = {},
): AuthSettings {
  return {
    jwtExpiry: auth.jwt_expiry ?? 3600,
    rotation: auth.enable_refresh_token_rotation ?? true,
    reuseInterval: auth.refresh_token_reuse_interval ?? 10,
  };
}

export interface AuthDeps {
  /** The database as `supabase_auth_admin`. */
  sql: Sql;
  verifier: JwtVerifier;
  profile: ProjectProfile;
  signing: { jwtSecret: string; privateJwk?: import("jose").JWK };
  settings: AuthSettings;
  /** The project URL; tokens name `<url>/auth/v1` as their issuer, as GoTrue's JWT issuer setting does. */
  issuerUrl: string;
}

/** GoTrue's `config.JWT.AdminRoles` on a hosted project. */
const ADMIN_ROLES = ["service_role", "supabase_admin"];
const AUDIENCE = "authenticated";
const INVALID_LOGIN = "Invalid login credentials";
const API_VERSION_2024 = "2024-01-01";

/** An error GoTrue answers with (apierrors.HTTPError). */
class AuthError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** An OAuth2 error (apierrors.OAuthError): always 400 `{error, error_description}`. */
class OAuthError extends Error {
  constructor(readonly error: string, readonly description: string) {
    super(description);
  }
}

const badRequest = (code: string, message: string) => new AuthError(400, code, message);

/**
 * supabase-js sends `X-Supabase-Api-Version: 2024-01-01`, which switches
 * GoTrue's error body from `{code: <status>, error_code, msg}` to
 * `{code: <error code>, message}` (errors.go, apiversions.go).
 */
function apiVersion(request: Request): string | null {
  const date = request.headers.get("x-supabase-api-version");
  return date !== null && /^\d{4}-\d{2}-\d{2}$/.test(date) && date >= API_VERSION_2024
    ? API_VERSION_2024
    : null;
}

function send(request: Request, status: number, body: unknown, headers: HeadersInit = {}) {
  const all = new Headers({
    ...corsHeaders(request),
    "content-type": "application/json",
    "cache-control": "no-store",
  });
  for (const [name, value] of new Headers(headers)) all.set(name, value);
  const version = apiVersion(request);
  if (version) all.set("x-supabase-api-version", version);
  return new Response(JSON.stringify(body), { status, headers: all });
}

function errorResponse(request: Request, error: AuthError | OAuthError): Response {
  if (error instanceof OAuthError) {
    return send(request, 400, { error: error.error, error_description: error.description });
  }
  const body = apiVersion(request)
    ? { code: error.code, message: error.message }
    : { code: error.status, error_code: error.code, msg: error.message };
  return send(request, error.status, body, { "x-sb-error-code": error.code });
}

/** The API gateway's refusal, before GoTrue sees the request. */
function gatewayRefusal(request: Request, rejected: CredentialRejected): Response {
  return new Response(JSON.stringify({ message: rejected.message, hint: rejected.hint }), {
    status: 401,
    headers: { ...corsHeaders(request), "content-type": "application/json" },
  });
}

/** retrieveRequestParams (helpers.go): a body that is not JSON, or of the wrong shape, is `bad_json`. */
async function readParams<T>(request: Request, schema: z.ZodType<T>): Promise<T> {
  const text = await request.text();
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw badRequest(
      "bad_json",
      `Could not parse request body as JSON: ${(error as Error).message}`,
    );
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw badRequest(
      "bad_json",
      `Could not parse request body as JSON: ${issue.path.join(".") || "body"}: ${issue.message}`,
    );
  }
  return parsed.data;
}

// --- users, sessions and tokens in the auth schema -----------------------------------

interface UserRow {
  id: string;
  aud: string;
  role: string;
  email: string | null;
  phone: string | null;
  email_confirmed_at: Date | null;
  last_sign_in_at: Date | null;
  raw_app_meta_data: Record<string, unknown> | null;
  raw_user_meta_data: Record<string, unknown> | null;
  is_anonymous: boolean;
  banned_until: Date | null;
  created_at: Date;
  updated_at: Date;
}

const USER_COLUMNS =
  "u.id, u.aud, u.role, u.email, u.phone, u.email_confirmed_at, u.last_sign_in_at, " +
  "u.raw_app_meta_data, u.raw_user_meta_data, u.is_anonymous, u.banned_until, u.created_at, u.updated_at";

const iso = (date: Date | null) => date?.toISOString() ?? undefined;

/** A user as GoTrue serializes models.User (fields that are null are left out, as `omitempty`). */
function userJson(user: UserRow) {
  return {
    id: user.id,
    aud: user.aud,
    role: user.role,
    email: user.email ?? "",
    email_confirmed_at: iso(user.email_confirmed_at),
    phone: user.phone ?? "",
    confirmed_at: iso(user.email_confirmed_at),
    last_sign_in_at: iso(user.last_sign_in_at),
    app_metadata: user.raw_app_meta_data ?? {},
    user_metadata: user.raw_user_meta_data ?? {},
    // Identities rows are not kept locally; GoTrue lists the user's email identity here.
    identities: [],
    created_at: iso(user.created_at),
    updated_at: iso(user.updated_at),
    is_anonymous: user.is_anonymous,
  };
}

const isBanned = (user: UserRow) => user.banned_until !== null && user.banned_until > new Date();

/** crypto.SecureAlphanumeric(12): lower-case base32 of random bytes (refresh_token.go). */
function secureAlphanumeric(length = 12): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (byte) => alphabet[byte & 31]).join("");
}

async function createRefreshToken(
  tx: TransactionSql,
  userId: string,
  sessionId: string,
  parent: string | null,
): Promise<string> {
  const token = secureAlphanumeric();
  await tx`
    insert into auth.refresh_tokens (instance_id, token, user_id, parent, session_id)
    values ('00000000-0000-0000-0000-000000000000', ${token}, ${userId}, ${parent}, ${sessionId})`;
  return token;
}

/**
 * GenerateAccessToken (tokens/service.go): the claims GoTrue signs, in its
 * order, with `amr` from the session's mfa_amr_claims (CalculateAALAndAMR).
 */
async function accessToken(
  tx: TransactionSql,
  deps: AuthDeps,
  user: UserRow,
  sessionId: string,
): Promise<{ token: string; expiresAt: number }> {
  const amr = await tx<{ method: string; timestamp: number }[]>`
    select authentication_method as method, floor(extract(epoch from updated_at))::int as timestamp
    from auth.mfa_amr_claims where session_id = ${sessionId} order by updated_at desc`;
  const issuedAt = Math.floor(Date.now() / 1000);
  const expiresAt = issuedAt + deps.settings.jwtExpiry;
  const token = await mintAccessToken(
    user.id,
    { url: deps.issuerUrl, jwtSecret: deps.signing.jwtSecret, privateJwk: deps.signing.privateJwk },
    {
      alg: deps.profile.signingKeys ? "ES256" : "HS256",
      claims: {
        aud: user.aud,
        exp: expiresAt,
        iat: issuedAt,
        email: user.email ?? "",
        phone: user.phone ?? "",
        app_metadata: user.raw_app_meta_data ?? {},
        user_metadata: user.raw_user_meta_data ?? {},
        role: user.role,
        aal: "aal1",
        amr: amr.map(({ method, timestamp }) => ({ method, timestamp })),
        session_id: sessionId,
        is_anonymous: user.is_anonymous,
      },
    },
  );
  return { token, expiresAt };
}

/** AccessTokenResponse. */
function tokenResponse(
  request: Request,
  user: UserRow,
  access: { token: string; expiresAt: number },
  refreshToken: string,
  headers: Record<string, string>,
): Response {
  return send(request, 200, {
    access_token: access.token,
    token_type: "bearer",
    expires_in: access.expiresAt - Math.floor(Date.now() / 1000),
    expires_at: access.expiresAt,
    refresh_token: refreshToken,
    user: userJson(user),
  }, headers);
}

// --- grants -------------------------------------------------------------------------

const PasswordGrantParams = z.object({
  email: z.string().optional(),
  phone: z.string().optional(),
  password: z.string().optional(),
});

/** ResourceOwnerPasswordGrant (api/token.go) followed by IssueRefreshToken. */
async function passwordGrant(request: Request, deps: AuthDeps) {
  const params = await readParams(request, PasswordGrantParams);
  if (params.email && params.phone) {
    throw badRequest(
      "validation_failed",
      "Only an email address or phone number should be provided on login.",
    );
  }
  if (params.phone) {
    // This local Auth keeps email users only, like a project with the phone provider off.
    throw new AuthError(422, "phone_provider_disabled", "Phone logins are disabled");
  }
  if (!params.email) throw badRequest("validation_failed", "missing email or phone");

  return await deps.sql.begin(async (tx) => {
    const [user] = await tx<(UserRow & { password_ok: boolean | null })[]>`
      select ${tx.unsafe(USER_COLUMNS)},
             case when coalesce(u.encrypted_password, '') = '' then null
                  else u.encrypted_password = extensions.crypt(${
      params.password ?? ""
    }, u.encrypted_password)
             end as password_ok
      from auth.users u
      where lower(u.email) = lower(${params
      .email!}) and u.aud = ${AUDIENCE} and u.deleted_at is null`;
    // An unknown email and a wrong password answer alike, so accounts cannot be enumerated.
    if (!user || user.password_ok === null) throw badRequest("invalid_credentials", INVALID_LOGIN);
    if (isBanned(user)) throw badRequest("user_banned", "User is banned");
    if (!user.password_ok) throw badRequest("invalid_credentials", INVALID_LOGIN);
    if (user.email_confirmed_at === null) {
      throw badRequest("email_not_confirmed", "Email not confirmed");
    }

    const [signedIn] = await tx<UserRow[]>`
      update auth.users u set last_sign_in_at = now(), updated_at = now()
      where u.id = ${user.id} returning ${tx.unsafe(USER_COLUMNS)}`;
    const sessionId = crypto.randomUUID();
    await tx`
      insert into auth.sessions (id, user_id, user_agent)
      values (${sessionId}, ${user.id}, ${request.headers.get("user-agent")})`;
    const refreshToken = await createRefreshToken(tx, user.id, sessionId, null);
    await tx`
      insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at, authentication_method)
      values (${crypto.randomUUID()}, ${sessionId}, now(), now(), 'password')`;
    const access = await accessToken(tx, deps, signedIn, sessionId);
    return tokenResponse(request, signedIn, access, refreshToken, {
      "sb-auth-user-id": user.id,
      "sb-auth-session-id": sessionId,
      "sb-auth-refresh-token-prefix": refreshToken.slice(0, 5),
    });
  });
}

const RefreshTokenGrantParams = z.object({ refresh_token: z.string().optional() });

/**
 * RefreshTokenGrant for v1 refresh tokens (tokens/service.go). The token row
 * is locked, so two refreshes of one token are serialized. A revoked token is
 * accepted only when it is the parent of the session's live token (the client
 * lost the answer: the live token is handed back), or within
 * `refresh_token_reuse_interval` of its rotation (concurrent refreshes); any
 * later reuse is treated as theft: with rotation on, every token of the
 * session is revoked, and the caller gets `refresh_token_already_used`.
 */
async function refreshTokenGrant(request: Request, deps: AuthDeps) {
  const params = await readParams(request, RefreshTokenGrantParams);
  if (!params.refresh_token) throw new OAuthError("invalid_request", "refresh_token required");
  const presented = params.refresh_token;

  const answer = await deps.sql.begin(async (tx) => {
    const [token] = await tx<
      {
        id: string;
        token: string;
        revoked: boolean;
        updated_at: Date;
        session_id: string | null;
        user_id: string;
      }[]
    >`
        select id, token, revoked, updated_at, session_id, user_id from auth.refresh_tokens
        where token = ${presented} for update`;
    if (!token) {
      throw badRequest(
        "refresh_token_not_found",
        "Invalid Refresh Token: Refresh Token Not Found",
      );
    }
    const [user] = await tx<UserRow[]>`
        select ${tx.unsafe(USER_COLUMNS)} from auth.users u where u.id::text = ${token.user_id}`;
    if (!user) {
      throw badRequest(
        "refresh_token_not_found",
        "Invalid Refresh Token: Refresh Token Not Found",
      );
    }
    if (isBanned(user)) throw badRequest("user_banned", "Invalid Refresh Token: User Banned");
    const [session] = token.session_id === null ? [] : await tx<{ id: string }[]>`
          select id from auth.sessions where id = ${token.session_id} for update`;
    if (!session) {
      throw badRequest("session_not_found", "Invalid Refresh Token: No Valid Session Found");
    }

    let issued: string | null = null;
    if (token.revoked) {
      const [active] = await tx<{ token: string; parent: string | null }[]>`
          select token, parent from auth.refresh_tokens
          where session_id = ${session.id} and revoked = false
          order by id desc limit 1`;
      if (active?.parent === token.token) {
        issued = active.token;
      } else if (Date.now() > token.updated_at.getTime() + deps.settings.reuseInterval * 1000) {
        if (deps.settings.rotation) {
          await tx`
              update auth.refresh_tokens set revoked = true, updated_at = now()
              where session_id = ${session.id} and revoked = false`;
        }
        // Returned, not thrown, so the revocation commits (storage.NewCommitWithError).
        return badRequest("refresh_token_already_used", "Invalid Refresh Token: Already Used");
      }
    }
    if (issued === null) {
      // GrantRefreshTokenSwap: the old token is revoked and becomes the new one's parent.
      await tx`
          update auth.refresh_tokens set revoked = true, updated_at = now() where id = ${token.id}`;
      issued = await createRefreshToken(tx, user.id, session.id, token.token);
    }
    await tx`
        update auth.sessions
        set refreshed_at = now() at time zone 'utc', updated_at = now(),
            user_agent = ${request.headers.get("user-agent")}
        where id = ${session.id}`;
    const access = await accessToken(tx, deps, user, session.id);
    return tokenResponse(request, user, access, issued, {
      "sb-auth-refresh-token-reuse": "false",
    });
  });
  if (answer instanceof AuthError) throw answer;
  return answer;
}

// --- admin --------------------------------------------------------------------------

/**
 * requireAdminCredentials + requireAdmin (middleware.go, auth.go): a bearer
 * token whose role is an admin role. The platform's API gateway turns the
 * secret key into a short-lived service_role JWT before GoTrue sees it, so the
 * secret key (as bearer, or alone in `apikey`) counts as service_role.
 */
async function requireAdmin(request: Request, deps: AuthDeps): Promise<void> {
  const bearer = bearerToken(request);
  // Without a bearer token the gateway mints one from the `sb_` API key.
  const key = bearer || request.headers.get("apikey");
  let role: unknown;
  if (deps.profile.newApiKeys && key === SECRET_KEY) {
    role = "service_role";
  } else if (deps.profile.newApiKeys && key === PUBLISHABLE_KEY) {
    role = "anon";
  } else if (!bearer) {
    throw new AuthError(401, "no_authorization", "This endpoint requires a valid Bearer token");
  } else if (bearer.startsWith("sb_")) {
    throw new CredentialRejected("invalid_api_key", "Invalid API key");
  } else {
    refuseDisabledLegacyKey(bearer, deps.profile);
    try {
      role = (await deps.verifier.verify(bearer)).role;
    } catch (error) {
      if (!(error instanceof JwtRejected)) throw error;
      throw new AuthError(
        403,
        "bad_jwt",
        `invalid JWT: unable to parse or verify signature, ${error.message}`,
      );
    }
  }
  if (typeof role !== "string" || !ADMIN_ROLES.includes(role)) {
    throw new AuthError(403, "not_admin", "User not allowed");
  }
}

const AdminUserParams = z.object({
  email: z.string().optional(),
  phone: z.string().optional(),
  password: z.string().optional(),
  email_confirm: z.boolean().optional(),
  role: z.string().optional(),
  app_metadata: z.record(z.string(), z.unknown()).nullable().optional(),
  user_metadata: z.record(z.string(), z.unknown()).nullable().optional(),
});

/** checkmail.ValidateFormat's shape of an address, as validateEmail (mail.go) applies it. */
const EMAIL_FORMAT =
  /^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

/** A random password as GoTrue generates one when none is given (64 characters). */
function generatedPassword(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(48));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
}

/** adminUserCreate (api/admin.go). */
async function adminCreateUser(request: Request, deps: AuthDeps) {
  await requireAdmin(request, deps);
  const params = await readParams(request, AdminUserParams);
  if (!params.email && !params.phone) {
    throw badRequest("validation_failed", "Cannot create a user without either an email or phone");
  }
  if (params.phone) {
    throw badRequest("validation_failed", "This local Auth creates email users only");
  }
  const email = params.email!;
  if (email.length > 255) throw badRequest("validation_failed", "An email address is too long");
  if (!EMAIL_FORMAT.test(email)) {
    throw badRequest("validation_failed", "Unable to validate email address: invalid format");
  }
  const password = params.password || generatedPassword();
  if (new TextEncoder().encode(password).length > 72) {
    throw badRequest("validation_failed", "bcrypt: password length exceeds 72 bytes");
  }
  // UpdateAppMetaData: the caller's keys are merged over the provider keys; a null value deletes one.
  const appMetadata: Record<string, unknown> = { provider: "email", providers: ["email"] };
  for (const [key, value] of Object.entries(params.app_metadata ?? {})) {
    if (value === null) delete appMetadata[key];
    else appMetadata[key] = value;
  }

  const user = await deps.sql.begin(async (tx) => {
    const [duplicate] = await tx`
      select 1 from auth.users where lower(email) = lower(${email}) and aud = ${AUDIENCE}`;
    if (duplicate) {
      throw new AuthError(
        422,
        "email_exists",
        "A user with this email address has already been registered",
      );
    }
    const [created] = await tx<UserRow[]>`
      insert into auth.users as u (
        instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
      values (
        '00000000-0000-0000-0000-000000000000', ${crypto.randomUUID()}, ${AUDIENCE},
        ${params.role || AUDIENCE}, ${email.toLowerCase()},
        extensions.crypt(${password}, extensions.gen_salt('bf', 10)),
        ${params.email_confirm ? new Date() : null},
        ${tx.json(appMetadata as never)}, ${tx.json((params.user_metadata ?? {}) as never)},
        now(), now())
      returning ${tx.unsafe(USER_COLUMNS)}`;
    return created;
  });
  return send(request, 200, userJson(user));
}

// --- routing ------------------------------------------------------------------------

/** Answers a request under /auth/v1/ other than the JWKS. */
export async function handleAuth(
  request: Request,
  path: string,
  deps: AuthDeps,
): Promise<Response> {
  try {
    requireApiKey(request, deps.profile);
    if (path === "/auth/v1/token") {
      if (request.method !== "POST") return new Response(null, { status: 405 });
      const grantType = new URL(request.url).searchParams.get("grant_type");
      if (grantType === "password") return await passwordGrant(request, deps);
      if (grantType === "refresh_token") return await refreshTokenGrant(request, deps);
      throw badRequest("invalid_credentials", "unsupported_grant_type");
    }
    if (path === "/auth/v1/admin/users") {
      if (request.method !== "POST") return new Response(null, { status: 405 });
      return await adminCreateUser(request, deps);
    }
    throw new AuthError(
      404,
      "not_found",
      `${path} is not served by this local Auth, which serves only /auth/v1/token (password, refresh_token) and POST /auth/v1/admin/users`,
    );
  } catch (error) {
    if (error instanceof AuthError || error instanceof OAuthError) {
      return errorResponse(request, error);
    }
    if (error instanceof CredentialRejected) return gatewayRefusal(request, error);
    throw error;
  }
}
