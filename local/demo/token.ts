/**
 * The demo user's access token, minted the way the local stack's Auth would
 * sign it (ES256 with the project's signing key), so the page calls the edge
 * functions exactly as a signed-in frontend does.
 */
import { mintAccessToken } from "../gateway/jwt.ts";
import { JWT_SECRET, loadSigningKeys } from "../gateway/keys.ts";

const LIFETIME_S = 3600;

async function stateDir(): Promise<string> {
  const fromEnv = Deno.env.get("GATEWAY_STATE_DIR");
  if (fromEnv) return fromEnv;
  const { stdout, code } = await new Deno.Command("bash", {
    args: [new URL("../db.sh", import.meta.url).pathname, "state-dir"],
    stdout: "piped",
    stderr: "null",
  }).output();
  if (code !== 0) throw new Error("cannot find the local stack's state directory");
  return new TextDecoder().decode(stdout).trim();
}

export async function mintDemoToken(
  url: string,
  user: { id: string; email: string },
): Promise<{ access_token: string; expires_at: number }> {
  const { privateJwk } = await loadSigningKeys(await stateDir());
  const accessToken = await mintAccessToken(user.id, { url, jwtSecret: JWT_SECRET, privateJwk }, {
    email: user.email,
    expiresIn: LIFETIME_S,
  });
  return { access_token: accessToken, expires_at: Date.now() + LIFETIME_S * 1000 };
}
