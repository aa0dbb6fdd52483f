/**
 * The demo user's access token, minted the way the local stack's Auth would
 * sign it for the kind of project it imitates (PROJECT_KEYS): ES256 with the
 * project's signing key, or HS256 with the legacy JWT secret on a legacy
 * project. The page then calls the edge functions exactly as a signed-in
 * frontend of that project does.
 */
import { mintAccessToken } from "../gateway/jwt.ts";
import { JWT_SECRET, loadSigningKeys, projectKeysFromEnv } from "../gateway/keys.ts";

const LIFETIME_S = 3600;

export async function mintDemoToken(
  url: string,
  user: { id: string; email: string },
): Promise<{ access_token: string; expires_at: number }> {
  const legacy = projectKeysFromEnv() === "legacy";
  const privateJwk = legacy ? undefined : (await loadSigningKeys()).privateJwk;
  const accessToken = await mintAccessToken(user.id, { url, jwtSecret: JWT_SECRET, privateJwk }, {
    alg: legacy ? "HS256" : "ES256",
    email: user.email,
    expiresIn: LIFETIME_S,
  });
  return { access_token: accessToken, expires_at: Date.now() + LIFETIME_S * 1000 };
}
