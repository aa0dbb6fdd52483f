/**
 * The end-to-end harness every e2e test of this repo shares. Tests reach the
 * stack only through its URL and keys, so the same test runs against:
 *
 * - a real local Supabase (`supabase start` + `supabase functions serve`): set
 *   SUPABASE_URL, and optionally SUPABASE_PUBLISHABLE_KEY, SUPABASE_SECRET_KEY,
 *   SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_JWT_SECRET,
 *   SUPABASE_DB_URL (each defaults to the CLI's local value);
 * - the Docker-free local stack: leave SUPABASE_URL unset and the harness runs
 *   `local/db.sh start` and `local/gateway.sh start` (both idempotent), then
 *   reads the `.env.local` the gateway writes.
 *
 * Usage:
 *
 *   import { closeStack, createUser, getStack, mintAccessToken, serviceClient, sql, userClient }
 *     from "../e2e/harness.ts";
 *
 *   Deno.test("a user reads only their own device", async () => {
 *     const stack = await getStack();                    // {url, publishableKey, …, dbUrl}
 *     const alice = await createUser();                  // a row in auth.users: {id, email}
 *     const token = await mintAccessToken(alice.id);     // ES256 by default; {alg: "HS256"}, {expiresIn: -120}
 *     const db = await sql();                            // postgres.js as `postgres`, for setup
 *     await db`insert into public.devices (user_id) values (${alice.id})`;
 *     const { data, error } = await (await userClient(token)).rpc("get_device_qr", { p_device_id: id });
 *     await fetch(`${stack.url}/functions/v1/get-device-qr`, { headers: { Authorization: `Bearer ${token}` } });
 *     await closeStack();                                // ends the harness's DB pool (resource sanitizer)
 *   });
 *
 * ES256 tokens are signed with the gateway's key (in the state dir), or on a
 * real stack with SUPABASE_JWT_SIGNING_JWK (a private JWK as JSON) or the
 * first private key of supabase/signing_keys.json. HS256 tokens use the JWT
 * secret and work everywhere.
 */
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import postgres from "postgres";
import type * as jose from "jose";
import { type AccessTokenOptions, mintAccessToken as mint } from "../../local/gateway/jwt.ts";
import {
  ANON_KEY,
  JWT_SECRET,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
  SIGNING_KEY_FILE,
} from "../../local/gateway/keys.ts";

export interface Stack {
  url: string;
  publishableKey: string;
  secretKey: string;
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
const LOCAL_DB_URL = "postgresql://postgres:postgres@127.0.0.1:54322/postgres";

let stackPromise: Promise<Stack> | null = null;
let pool: postgres.Sql | null = null;
let signingJwk: Promise<jose.JWK | undefined> | null = null;

function readEnvFile(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = /^\s*([A-Z_][A-Z0-9_]*)\s*=\s*"?([^"]*)"?\s*$/.exec(line);
    if (match) values[match[1]] = match[2];
  }
  return values;
}

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
  return {
    url: values.SUPABASE_URL!.replace(/\/$/, ""),
    publishableKey: values.SUPABASE_PUBLISHABLE_KEY ?? PUBLISHABLE_KEY,
    secretKey: values.SUPABASE_SECRET_KEY ?? SECRET_KEY,
    anonKey: values.SUPABASE_ANON_KEY ?? ANON_KEY,
    serviceRoleKey: values.SUPABASE_SERVICE_ROLE_KEY ?? SERVICE_ROLE_KEY,
    jwtSecret: values.SUPABASE_JWT_SECRET ?? JWT_SECRET,
    dbUrl: values.SUPABASE_DB_URL ?? LOCAL_DB_URL,
  };
}

async function startLocalStack(): Promise<Stack> {
  const url = `http://127.0.0.1:${Deno.env.get("GATEWAY_PORT") ?? "54321"}`;
  await run("local/db.sh", "start");
  if (!(await healthy(url))) {
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
  try {
    return fromEnv(readEnvFile(await Deno.readTextFile(`${REPO}/.env.local`)));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    return fromEnv({ SUPABASE_URL: url }); // the gateway's values are the CLI defaults
  }
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

async function loadSigningJwk(): Promise<jose.JWK | undefined> {
  const fromEnv = Deno.env.get("SUPABASE_JWT_SIGNING_JWK");
  if (fromEnv) return JSON.parse(fromEnv);
  const candidates: string[] = [];
  if (!Deno.env.get("SUPABASE_URL")) {
    const stateDir = Deno.env.get("GATEWAY_STATE_DIR") ?? await run("local/db.sh", "state-dir");
    candidates.push(`${stateDir}/${SIGNING_KEY_FILE}`);
  }
  candidates.push(`${REPO}/supabase/signing_keys.json`);
  for (const path of candidates) {
    try {
      const parsed = JSON.parse(await Deno.readTextFile(path));
      const keys: jose.JWK[] = Array.isArray(parsed) ? parsed : [parsed];
      const key = keys.find((jwk) => jwk.d !== undefined && jwk.kty === "EC");
      if (key) return key;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  return undefined;
}

/**
 * A user access token as Supabase Auth issues it: `role: authenticated`,
 * `aud: authenticated`, `sub` = the user id. Default ES256, one hour.
 */
export async function mintAccessToken(
  userId: string,
  options: AccessTokenOptions = {},
): Promise<string> {
  const stack = await getStack();
  const alg = options.alg ?? "ES256";
  let privateJwk: jose.JWK | undefined;
  if (alg === "ES256") {
    signingJwk ??= loadSigningJwk();
    privateJwk = await signingJwk;
  }
  return await mint(userId, { url: stack.url, jwtSecret: stack.jwtSecret, privateJwk }, options);
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
