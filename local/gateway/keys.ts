/**
 * The API keys and signing keys of the local project.
 *
 * The key values are the Supabase CLI's local development defaults (what
 * `supabase status` prints for every local project), so scripts and docs written
 * against a real `supabase start` work unchanged against this gateway. The
 * asymmetric key that signs user access tokens is generated once per checkout
 * and kept in the git-ignored state directory, like `[auth] signing_keys_path`.
 */
import * as jose from "jose";

export const PUBLISHABLE_KEY = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";
export const SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
export const JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** The legacy HS256 `anon` / `service_role` keys of the CLI, signed with JWT_SECRET. */
export const ANON_KEY =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
export const SERVICE_ROLE_KEY =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

export const SIGNING_KEY_FILE = "gateway/signing-key.json";

export interface SigningKeys {
  /** Private ES256 JWK with `kid`, for minting user access tokens. */
  privateJwk: jose.JWK;
  /** What `/auth/v1/.well-known/jwks.json` serves and functions get as SUPABASE_JWKS. */
  jwks: { keys: jose.JWK[] };
}

/** The public half of a private JWK, as GoTrue publishes it. */
export function publicJwk(privateJwk: jose.JWK): jose.JWK {
  const { d: _d, key_ops: _ops, ...rest } = privateJwk;
  return { ...rest, key_ops: ["verify"] };
}

/** Loads the ES256 signing key from the state dir, creating it on first use. */
export async function loadSigningKeys(stateDir: string): Promise<SigningKeys> {
  const path = `${stateDir}/${SIGNING_KEY_FILE}`;
  let privateJwk: jose.JWK;
  try {
    privateJwk = JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    const { privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
    privateJwk = {
      ...(await jose.exportJWK(privateKey)),
      kid: crypto.randomUUID(),
      alg: "ES256",
      use: "sig",
    };
    await Deno.mkdir(`${stateDir}/gateway`, { recursive: true });
    // Written aside then renamed, so a concurrent start never reads half a key.
    const tmp = `${path}.${crypto.randomUUID()}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(privateJwk, null, 2) + "\n", { mode: 0o600 });
    try {
      await Deno.link(tmp, path);
    } catch (linkError) {
      if (!(linkError instanceof Deno.errors.AlreadyExists)) throw linkError;
      privateJwk = JSON.parse(await Deno.readTextFile(path));
    } finally {
      await Deno.remove(tmp);
    }
  }
  return { privateJwk, jwks: { keys: [publicJwk(privateJwk)] } };
}
