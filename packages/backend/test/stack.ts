/**
 * The stack the store tests run against, found the way a backend finds its
 * project: SUPABASE_URL + SUPABASE_SECRET_KEY (or SUPABASE_SERVICE_ROLE_KEY)
 * and, for test setup only, SUPABASE_DB_URL; else the `.env.local` the local
 * gateway writes (GATEWAY_ENV_FILE names another). Start it with
 * `local/db.sh start && local/gateway.sh start`.
 */
import { readFileSync } from "node:fs";
import process from "node:process";
import { parseEnv } from "node:util";
import { createClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { type BackendApi, supabaseBackend } from "@device-qr/backend";

export interface TestStack {
  api: BackendApi;
  /** postgres.js as `postgres`, to set up devices and look under the store. */
  db: postgres.Sql;
}

function stackEnv(): Record<string, string | undefined> {
  if (process.env.SUPABASE_URL) return process.env;
  // This file sits two levels below the repository root, as test/ or as dist-test/.
  const file = process.env.GATEWAY_ENV_FILE ??
    new URL("../../../.env.local", import.meta.url);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    throw new Error(
      `no stack: set SUPABASE_URL, SUPABASE_SECRET_KEY and SUPABASE_DB_URL, or start the local ` +
        `one (local/db.sh start && local/gateway.sh start writes ${file})`,
    );
  }
  return parseEnv(text);
}

export function testStack(): TestStack {
  const env = stackEnv();
  const key = env.SUPABASE_SECRET_KEY ?? env.SUPABASE_SERVICE_ROLE_KEY;
  if (!env.SUPABASE_URL || !key || !env.SUPABASE_DB_URL) {
    throw new Error(
      "the stack's env needs SUPABASE_URL, SUPABASE_SECRET_KEY and SUPABASE_DB_URL",
    );
  }
  const client = createClient(env.SUPABASE_URL, key, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  return {
    api: supabaseBackend(client),
    db: postgres(env.SUPABASE_DB_URL, {
      max: 2,
      onnotice: () => {},
      idle_timeout: 5,
    }),
  };
}

/** A device of a new user, assigned to `serverId` and being paired (epoch 1), as a claim leaves it. */
export async function pairingDevice(
  db: postgres.Sql,
  serverId: string,
): Promise<string> {
  const userId = crypto.randomUUID();
  await db`
    insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                            raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
    values ('00000000-0000-0000-0000-000000000000', ${userId}, 'authenticated', 'authenticated',
            ${`user-${userId}@example.test`}, '', now(), '{"provider": "email"}', '{}', now(), now())`;
  const [device] = await db<{ id: string }[]>`
    insert into public.devices (user_id, assigned_server_id, status, connecting_since, assignment_epoch)
    values (${userId}, ${serverId}, 'connecting', now(), 1)
    returning id`;
  return device.id;
}

/** What a crash looks like to the database: the server's heartbeats stopped long ago. */
export async function killServer(
  db: postgres.Sql,
  serverId: string,
): Promise<void> {
  await db`update public.backend_servers set last_health_ping = now() - interval '1 hour'
           where id = ${serverId}`;
}
