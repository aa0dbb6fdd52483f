/**
 * The API keys and signing keys of the local project, and which of them are
 * live for the kind of project being imitated (PROJECT_KEYS).
 *
 * The key values are the Supabase CLI's local development defaults (what
 * `supabase status` prints for every local project), so scripts and docs written
 * against a real `supabase start` work unchanged against this gateway. The
 * asymmetric key that signs user access tokens is `supabase/signing_keys.json`
 * (signingKeysPath), in the JWK array format `supabase gen signing-key` writes,
 * created on first use.
 */
import * as jose from "jose";
import { parse as parseToml } from "smol-toml";

export const PUBLISHABLE_KEY = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH";
export const SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
export const JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

/** The legacy HS256 `anon` / `service_role` keys of the CLI, signed with JWT_SECRET. */
export const ANON_KEY =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
export const SERVICE_ROLE_KEY =
  "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

/**
 * The three kinds of hosted project (docs: guides/api/api-keys,
 * guides/auth/signing-keys). The API-key migration and the JWT-secret
 * migration are separate, so every combination below exists in the wild:
 *
 * - `legacy`: never migrated. API keys are the `anon` / `service_role` JWTs;
 *   Auth signs user tokens with the legacy JWT secret (HS256, no `kid`); the
 *   JWKS is empty, since a shared secret is never published.
 * - `signing`: migrated. API keys are `sb_publishable_…` / `sb_secret_…`, the
 *   legacy API keys disabled; Auth signs with an ES256 key published in the
 *   JWKS. The legacy JWT secret is "previously used": the platform keeps
 *   accepting HS256 tokens it signed until the owner revokes it, a separate
 *   step after disabling the legacy keys.
 * - `both`: mid-migration. Both kinds of API key work; tokens are ES256 or HS256.
 */
export type ProjectKeys = "signing" | "legacy" | "both";

export const PROJECT_KEYS: readonly ProjectKeys[] = ["signing", "legacy", "both"];

/** What a project of one kind accepts, for the gateway and the functions' environment. */
export interface ProjectProfile {
  kind: ProjectKeys;
  /** `sb_publishable_…` / `sb_secret_…` exist and are accepted. */
  newApiKeys: boolean;
  /** The `anon` / `service_role` JWT keys are enabled. */
  legacyApiKeys: boolean;
  /** Auth issues ES256 tokens, and the JWKS publishes their key. */
  signingKeys: boolean;
}

export function projectProfile(kind: ProjectKeys): ProjectProfile {
  return {
    kind,
    newApiKeys: kind !== "legacy",
    legacyApiKeys: kind !== "signing",
    signingKeys: kind !== "legacy",
  };
}

/** PROJECT_KEYS from the environment (default `signing`), refused loudly when mistyped. */
export function projectKeysFromEnv(value = Deno.env.get("PROJECT_KEYS")): ProjectKeys {
  if (value === undefined || value === "") return "signing";
  if ((PROJECT_KEYS as readonly string[]).includes(value)) return value as ProjectKeys;
  throw new Error(`PROJECT_KEYS=${value} is not one of ${PROJECT_KEYS.join(", ")}`);
}

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/**
 * The file of ES256 keys that signs local user tokens: SIGNING_KEYS_PATH, else
 * `[auth] signing_keys_path` of the config.toml when a project names one,
 * else `signing_keys.json` beside it. The committed config.toml names none,
 * because every Supabase CLI command fails to load a config whose signing keys
 * file is missing, as it is in a fresh clone (CLI 2.117.0 and 3.1.0 alike:
 * "failed to read signing keys"). Relative paths are relative to `supabase/`, as the CLI resolves them.
 */
export async function signingKeysPath(
  configToml = `${REPO}/supabase/config.toml`,
): Promise<string> {
  const override = Deno.env.get("SIGNING_KEYS_PATH");
  if (override) return override;
  const toml = parseToml(await Deno.readTextFile(configToml)) as {
    auth?: { signing_keys_path?: string };
  };
  const path = toml.auth?.signing_keys_path ?? "./signing_keys.json";
  const dir = configToml.replace(/\/[^/]*$/, "");
  return path.startsWith("/") ? path : `${dir}/${path.replace(/^\.\//, "")}`;
}

export interface SigningKeys {
  /** Private ES256 JWK with `kid`, for minting user access tokens. */
  privateJwk: jose.JWK;
  /** The public half of every key in the file, as `/auth/v1/.well-known/jwks.json` serves it. */
  jwks: { keys: jose.JWK[] };
}

/** The public half of a private JWK, as GoTrue publishes it. */
export function publicJwk(privateJwk: jose.JWK): jose.JWK {
  const { d: _d, key_ops: _ops, ext: _ext, ...rest } = privateJwk;
  return { ...rest, key_ops: ["verify"] };
}

/** A key shaped like one `supabase gen signing-key --algorithm ES256` writes. */
async function generateSigningKey(): Promise<jose.JWK> {
  const { privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
  const { kty, d, crv, x, y } = await jose.exportJWK(privateKey);
  return {
    kty,
    kid: crypto.randomUUID(),
    use: "sig",
    key_ops: ["sign", "verify"],
    alg: "ES256",
    ext: true,
    d,
    crv,
    x,
    y,
  };
}

/**
 * Loads the project's signing keys (default: signingKeysPath()),
 * creating the file with one ES256 key on first use. The first private EC
 * key signs; every key in the file is published.
 */
export async function loadSigningKeys(
  { path }: { path?: string } = {},
): Promise<SigningKeys> {
  const file = path ?? await signingKeysPath();
  let keys: jose.JWK[];
  try {
    keys = JSON.parse(await Deno.readTextFile(file));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    keys = [await generateSigningKey()];
    await Deno.mkdir(file.replace(/\/[^/]*$/, ""), { recursive: true });
    // Written aside then linked into place, so a concurrent start never reads
    // half a key and two starts never end up with different keys.
    const tmp = `${file}.${crypto.randomUUID()}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(keys, null, 2) + "\n", { mode: 0o600 });
    try {
      await Deno.link(tmp, file);
    } catch (linkError) {
      if (!(linkError instanceof Deno.errors.AlreadyExists)) throw linkError;
      keys = JSON.parse(await Deno.readTextFile(file));
    } finally {
      await Deno.remove(tmp);
    }
  }
  if (!Array.isArray(keys)) throw new Error(`${file} is not a JWK array`);
  const privateJwk = keys.find((key) => key.kty === "EC" && key.d !== undefined);
  if (!privateJwk?.kid) throw new Error(`${file} holds no private ES256 key with a kid`);
  return { privateJwk, jwks: { keys: keys.map(publicJwk) } };
}

// `deno run local/gateway/keys.ts`: create the signing keys file if missing (local/setup.sh).
if (import.meta.main) {
  await loadSigningKeys();
  console.log(await signingKeysPath());
}
