/**
 * Verifying and minting JWTs the way a Supabase project does: legacy HS256
 * tokens signed with the project's JWT secret, and ES256 tokens whose public key
 * is in the project's JWKS. `alg: none`, unknown algorithms and unknown key ids
 * are refused, so a forged token never reaches the database.
 */
import * as jose from "jose";

export type JwtClaims = jose.JWTPayload & { role?: string };

/** Why a token was refused, in PostgREST's words (its JwtDecodeErr / JwtClaimsErr messages). */
export class JwtRejected extends Error {
  constructor(message: string, readonly expired = false) {
    super(message);
  }
}

export interface JwtVerifier {
  verify(token: string): Promise<JwtClaims>;
}

export function createJwtVerifier(jwtSecret: string, jwks: { keys: jose.JWK[] }): JwtVerifier {
  const secret = new TextEncoder().encode(jwtSecret);
  const publicKeys = new Map<string, Promise<CryptoKey | Uint8Array>>();
  const keyFor = (kid: string | undefined) => {
    const jwk = jwks.keys.find((key) => kid === undefined || key.kid === kid);
    if (!jwk) throw new JwtRejected("No suitable key or wrong key type");
    const id = jwk.kid ?? "";
    if (!publicKeys.has(id)) publicKeys.set(id, jose.importJWK(jwk, "ES256"));
    return publicKeys.get(id)!;
  };

  return {
    async verify(token) {
      const parts = token.split(".");
      if (parts.length !== 3) throw new JwtRejected(`Expected 3 parts in JWT; got ${parts.length}`);
      let header: jose.ProtectedHeaderParameters;
      try {
        header = jose.decodeProtectedHeader(token);
      } catch {
        throw new JwtRejected("JWT couldn't be decoded");
      }
      try {
        const { payload } = await jose.jwtVerify(
          token,
          () => header.alg === "HS256" ? secret : keyFor(header.kid),
          // PostgREST tolerates 30 s of clock skew.
          { algorithms: ["HS256", "ES256"], clockTolerance: 30 },
        );
        return payload as JwtClaims;
      } catch (error) {
        if (error instanceof JwtRejected) throw error;
        if (error instanceof jose.errors.JWTExpired) throw new JwtRejected("JWT expired", true);
        if (error instanceof jose.errors.JOSEAlgNotAllowed) {
          throw new JwtRejected("Wrong or unsupported encoding algorithm");
        }
        if (error instanceof jose.errors.JWTClaimValidationFailed) {
          throw new JwtRejected(`JWT ${error.claim} claim is invalid: ${error.reason}`);
        }
        throw new JwtRejected("JWT cryptographic operation failed");
      }
    },
  };
}

export interface AccessTokenOptions {
  alg?: "ES256" | "HS256";
  /** Seconds until expiry; negative values mint an already expired token. Default 3600. */
  expiresIn?: number;
  email?: string;
  role?: string;
  /** Extra or overriding claims. */
  claims?: Record<string, unknown>;
}

/** Mints a user access token shaped like the ones Supabase Auth (GoTrue) issues. */
export async function mintAccessToken(
  userId: string,
  signing: { url: string; jwtSecret: string; privateJwk?: jose.JWK },
  options: AccessTokenOptions = {},
): Promise<string> {
  const alg = options.alg ?? "ES256";
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: `${signing.url}/auth/v1`,
    sub: userId,
    aud: "authenticated",
    exp: now + (options.expiresIn ?? 3600),
    iat: now,
    email: options.email ?? "",
    phone: "",
    app_metadata: { provider: "email", providers: ["email"] },
    user_metadata: {},
    role: options.role ?? "authenticated",
    aal: "aal1",
    amr: [{ method: "password", timestamp: now }],
    session_id: crypto.randomUUID(),
    is_anonymous: false,
    ...options.claims,
  };
  const jwt = new jose.SignJWT(claims);
  if (alg === "HS256") {
    return await jwt.setProtectedHeader({ alg, typ: "JWT" })
      .sign(new TextEncoder().encode(signing.jwtSecret));
  }
  if (!signing.privateJwk) {
    throw new Error(
      "ES256 tokens need the project's private signing key (see tests/e2e/harness.ts)",
    );
  }
  // `supabase gen signing-key` writes key_ops ["sign", "verify"], which Web
  // Crypto refuses on a private key: import it for signing only.
  const { key_ops: _ops, ext: _ext, ...privateJwk } = signing.privateJwk;
  return await jwt.setProtectedHeader({ alg, typ: "JWT", kid: privateJwk.kid })
    .sign(await jose.importJWK(privateJwk, "ES256"));
}
