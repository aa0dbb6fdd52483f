/**
 * The end-to-end harness every e2e test of this repo shares. Tests reach the
 * stack only through its URL and keys, so the same test runs against:
 *
 * - a real local Supabase (`supabase start` + `supabase functions serve`): set
 *   SUPABASE_URL, and optionally SUPABASE_PUBLISHABLE_KEY, SUPABASE_SECRET_KEY,
 *   SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET,
 *   SUPABASE_DB_URL (without any API key, the CLI's local values);
 * - the Docker-free local stack: leave SUPABASE_URL unset and the harness runs
 *   `local/db.sh start` and `local/gateway.sh start` (both idempotent; the
 *   gateway imitates the kind of project PROJECT_KEYS names), then reads the
 *   `.env.local` the gateway writes (GATEWAY_ENV_FILE, when set, names another).
 *
 * The API keys present say what kind of project it is (`stack.kind`):
 * publishable/secret keys only → `signing`, anon/service_role keys only →
 * `legacy`, both → `both`. `stack.publishableKey` and `stack.secretKey` are
 * the keys a client and an operator of that project use (the anon and
 * service_role keys on a legacy project), and tokens are minted the way its
 * Auth signs them: HS256 on a legacy project, ES256 otherwise.
 *
 * Usage:
 *
 *   import { closeStack, createUser, getStack, mintAccessToken, serviceClient, sql, userClient }
 *     from "../e2e/harness.ts";
 *
 *   Deno.test("a user reads only their own device", async () => {
 *     const stack = await getStack();                    // {url, publishableKey, …, dbUrl}
 *     const alice = await createUser();                  // a row in auth.users: {id, email}
 *     const token = await mintAccessToken(alice.id);     // the project's algorithm; {alg: "HS256"}, {expiresIn: -120}
 *     const db = await sql();                            // postgres.js as `postgres`, for setup
 *     await db`insert into public.devices (user_id) values (${alice.id})`;
 *     const { data, error } = await (await userClient(token)).rpc("get_device_qr", { p_device_id: id });
 *     await fetch(`${stack.url}/functions/v1/get-device-qr`, { headers: { Authorization: `Bearer ${token}` } });
 *     await closeStack();                                // ends the harness's DB pool (resource sanitizer)
 *   });
 *
 * ES256 tokens are signed with SUPABASE_JWT_SIGNING_JWK (a private JWK as
 * JSON) when set, else with the first private key of the local stack's signing
 * keys file (signingKeysPath in local/gateway/keys.ts), as `supabase start`
 * signs them. HS256 tokens use the JWT secret.
 */
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import postgres from "postgres";
import type * as jose from "jose";
import { type AccessTokenOptions, mintAccessToken as mint } from "../../local/gateway/jwt.ts";
import { localEnvFile, readEnvFile } from "../../worker/env.ts";
import {
  ANON_KEY,
  JWT_SECRET,
  loadSigningKeys,
  type ProjectKeys,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "../../local/gateway/keys.ts";

export interface Stack {
  url: string;
  /** Which API keys the project has (see the top of this file). */
  kind: ProjectKeys;
  /** What a client sends as `apikey`: the publishable key, or the anon key on a legacy project. */
  publishableKey: string;
  /** What an operator sends: the secret key, or the service_role key on a legacy project. */
  secretKey: string;
  /**
   * The legacy keys. A migrated project (`signing`) still has them, disabled:
   * its gateway refuses them (the CLI's values when the env names none).
   */
  anonKey: string;
  serviceRoleKey: string;
  jwtSecret: string;
  dbUrl: string;
}

export interface TestUser {
  id: string;
  email: string;
}

export type { AccessTokenOptions };

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const LOCAL_DB_URL = `postgresql://postgres:postgres@127.0.0.1:${
  Deno.env.get("DB_PORT") ?? "54322"
}/postgres`;

let stackPromise: Promise<Stack> | null = null;
let pool: postgres.Sql | null = null;
let signingJwk: Promise<jose.JWK | undefined> | null = null;

async function run(script: string, ...args: string[]): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(`${REPO}/${script}`, {
    args,
    cwd: REPO,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`${script} ${args.join(" ")} failed:\n${new TextDecoder().decode(stderr)}`);
  }
  return new TextDecoder().decode(stdout).trim();
}

async function healthy(url: string): Promise<boolean> {
  try {
    const response = await fetch(`${url}/_gateway/health`, { signal: AbortSignal.timeout(2_000) });
    await response.body?.cancel();
    return response.ok;
  } catch {
    return false;
  }
}

function fromEnv(values: Record<string, string | undefined>): Stack {
  const keyNames = [
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
    "SUPABASE_ANON_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
  ];
  // No key named at all: the CLI's local stack, which has every key.
  const keys = keyNames.some((name) => values[name]) ? values : {
    SUPABASE_PUBLISHABLE_KEY: PUBLISHABLE_KEY,
    SUPABASE_SECRET_KEY: SECRET_KEY,
    SUPABASE_ANON_KEY: ANON_KEY,
    SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE_KEY,
  };
  const publishable = keys.SUPABASE_PUBLISHABLE_KEY;
  const anon = keys.SUPABASE_ANON_KEY;
  const client = publishable ?? anon;
  const operator = keys.SUPABASE_SECRET_KEY ?? keys.SUPABASE_SERVICE_ROLE_KEY;
  if (!client || !operator) {
    throw new Error(
      "the stack's env names no usable key pair: SUPABASE_PUBLISHABLE_KEY + SUPABASE_SECRET_KEY, " +
        "or SUPABASE_ANON_KEY + SUPABASE_SERVICE_ROLE_KEY",
    );
  }
  return {
    url: values.SUPABASE_URL!.replace(/\/$/, ""),
    kind: publishable && anon ? "both" : publishable ? "signing" : "legacy",
    publishableKey: client,
    secretKey: operator,
    anonKey: anon ?? ANON_KEY,
    serviceRoleKey: keys.SUPABASE_SERVICE_ROLE_KEY ?? SERVICE_ROLE_KEY,
    jwtSecret: values.SUPABASE_JWT_SECRET ?? JWT_SECRET,
    dbUrl: values.SUPABASE_DB_URL ?? LOCAL_DB_URL,
  };
}

async function startLocalStack(): Promise<Stack> {
  const url = `http://127.0.0.1:${Deno.env.get("GATEWAY_PORT") ?? "54321"}`;
  await run("local/db.sh", "start");
  // A PROJECT_KEYS that names a kind makes sure the gateway is of that kind
  // (gateway.sh restarts one of another kind); otherwise any running one will do.
  if (Deno.env.get("PROJECT_KEYS") || !(await healthy(url))) {
    try {
      await run("local/gateway.sh", "start");
    } catch (error) {
      // Another test process may be starting it at this very moment.
      const deadline = Date.now() + 15_000;
      while (!(await healthy(url))) {
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  }
  const written = readEnvFile(localEnvFile());
  // Without the file, the gateway's values are the CLI defaults.
  return fromEnv(written.SUPABASE_URL ? written : { SUPABASE_URL: url });
}

/** The stack under test: the environment's, or the local one, started if need be. */
export function getStack(): Promise<Stack> {
  if (!stackPromise) {
    const env = Deno.env.toObject();
    stackPromise = env.SUPABASE_URL ? Promise.resolve(fromEnv(env)) : startLocalStack();
    stackPromise.catch(() => (stackPromise = null));
  }
  return stackPromise;
}

/** postgres.js connected as `postgres` (bypasses RLS), for test setup and assertions. */
export async function sql(): Promise<postgres.Sql> {
  if (!pool) {
    pool = postgres((await getStack()).dbUrl, { max: 4, onnotice: () => {}, idle_timeout: 5 });
  }
  return pool;
}

/** Ends the harness's database pool; call it at the end of a test that used `sql()` or `createUser()`. */
export async function closeStack(): Promise<void> {
  const ending = pool;
  pool = null;
  await ending?.end({ timeout: 5 });
}

/** A confirmed email user, as a row in auth.users. */
export async function createUser(email?: string): Promise<TestUser> {
  const id = crypto.randomUUID();
  const address = email ?? `user-${id}@example.test`;
  const db = await sql();
  await db`
    insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                            raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
    values ('00000000-0000-0000-0000-000000000000', ${id}, 'authenticated', 'authenticated', ${address}, '',
            now(), '{"provider": "email", "providers": ["email"]}', '{}', now(), now())`;
  return { id, email: address };
}

async function loadSigningJwk(): Promise<jose.JWK> {
  const fromEnv = Deno.env.get("SUPABASE_JWT_SIGNING_JWK");
  if (fromEnv) return JSON.parse(fromEnv);
  return (await loadSigningKeys()).privateJwk;
}

/**
 * A user access token as Supabase Auth issues it: `role: authenticated`,
 * `aud: authenticated`, `sub` = the user id, one hour. Signed the way the
 * project's Auth signs (HS256 on a legacy project, ES256 otherwise) unless
 * `alg` says otherwise.
 */
export async function mintAccessToken(
  userId: string,
  options: AccessTokenOptions = {},
): Promise<string> {
  const stack = await getStack();
  const alg = options.alg ?? (stack.kind === "legacy" ? "HS256" : "ES256");
  let privateJwk: jose.JWK | undefined;
  if (alg === "ES256") {
    signingJwk ??= loadSigningJwk();
    privateJwk = await signingJwk;
  }
  return await mint(userId, { url: stack.url, jwtSecret: stack.jwtSecret, privateJwk }, {
    ...options,
    alg,
  });
}

const CLIENT_OPTIONS = {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
};

/** supabase-js with the secret key: runs as `service_role`, bypasses RLS. */
export async function serviceClient(): Promise<SupabaseClient> {
  const stack = await getStack();
  return createClient(stack.url, stack.secretKey, CLIENT_OPTIONS);
}

/** supabase-js with the publishable key, acting as the user whose access token this is. */
export async function userClient(token: string): Promise<SupabaseClient> {
  const stack = await getStack();
  return createClient(stack.url, stack.publishableKey, {
    ...CLIENT_OPTIONS,
    global: { headers: { Authorization: `Bearer ${token}` } },
  });
}

/** supabase-js with the publishable key and no user: runs as `anon`. */
export async function anonClient(): Promise<SupabaseClient> {
  const stack = await getStack();
  return createClient(stack.url, stack.publishableKey, CLIENT_OPTIONS);
}
