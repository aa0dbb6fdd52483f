/**
 * A PostgreSQL outage under load, on a private stack (tests/chaos/private_stack.ts),
 * so restarting the database disturbs nobody: while it is down, every
 * `get-device-qr` must answer `503 database_unavailable` with `Retry-After`
 * promptly, not hang until it is back; once it is back, the functions recover
 * by themselves.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { mintAccessToken } from "../../local/gateway/jwt.ts";
import { startPrivateStack } from "./private_stack.ts";

/** Requests a second, sent on a fixed schedule whether or not earlier ones were answered. */
const RATE = 40;
const OUTAGE_MS = 4_000;
/** How long a client may wait for the 503 while the database is down. */
const PROMPT_MS = 3_000;

interface Sample {
  sentAt: number;
  ms: number;
  status: number;
  code: string | null;
  retryAfter: string | null;
}

Deno.test({
  name: "while PostgreSQL is down, busy get-device-qr answers 503 database_unavailable promptly",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const stack = await startPrivateStack(() => {});
    const { env } = stack;
    try {
      const db = postgres(env.SUPABASE_DB_URL, { max: 1, onnotice: () => {} });
      const userId = crypto.randomUUID();
      await db`
        insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
                                email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                                created_at, updated_at)
        values ('00000000-0000-0000-0000-000000000000', ${userId}, 'authenticated',
                'authenticated', ${`outage-${userId}@example.test`}, '', now(), '{}', '{}',
                now(), now())`;
      const [device] = await db`
        insert into public.devices (user_id, device_name, status)
        values (${userId}, 'outage phone', 'connected') returning id`;
      await db.end();
      const token = await mintAccessToken(userId, {
        url: env.SUPABASE_URL,
        jwtSecret: env.SUPABASE_JWT_SECRET,
        privateJwk: JSON.parse(env.SUPABASE_JWT_SIGNING_JWK),
      });

      const ask = async (): Promise<Sample> => {
        const sentAt = Date.now();
        try {
          const response = await fetch(`${env.SUPABASE_URL}/functions/v1/get-device-qr`, {
            method: "POST",
            headers: {
              apikey: env.SUPABASE_PUBLISHABLE_KEY,
              authorization: `Bearer ${token}`,
              "content-type": "application/json",
            },
            body: JSON.stringify({ device_id: device.id }),
            signal: AbortSignal.timeout(20_000),
          });
          const body = await response.json().catch(() => null);
          return {
            sentAt,
            ms: Date.now() - sentAt,
            status: response.status,
            code: body?.error?.code ?? null,
            retryAfter: response.headers.get("retry-after"),
          };
        } catch {
          return { sentAt, ms: Date.now() - sentAt, status: 0, code: null, retryAfter: null };
        }
      };

      const first = await ask();
      assert.equal(first.status, 200, "the stack answers before the outage");

      let polling = true;
      const inFlight: Promise<Sample>[] = [];
      const pollers = (async () => {
        while (polling) {
          inFlight.push(ask());
          await new Promise((resolve) => setTimeout(resolve, 1000 / RATE));
        }
      })();
      await new Promise((resolve) => setTimeout(resolve, 500));
      await stack.stopDatabase();
      const downAt = Date.now();
      await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS));
      // The database may accept connections before startDatabase() returns:
      // "while down" ends when the restart begins.
      const restartAt = Date.now();
      await stack.startDatabase();
      const upAt = Date.now();
      let recoveredAfter: number | null = null;
      while (recoveredAfter === null && Date.now() < upAt + 15_000) {
        const sample = await ask();
        if (sample.status === 200) recoveredAfter = Date.now() - upAt;
        else await new Promise((resolve) => setTimeout(resolve, 200));
      }
      polling = false;
      await pollers;
      const samples = await Promise.all(inFlight);

      // Requests sent while the database was down (a little after the stop, so
      // none was already answered from a live connection).
      const whileDown = samples.filter((s) => s.sentAt > downAt + 200 && s.sentAt < restartAt);
      assert.ok(whileDown.length >= RATE, `only ${whileDown.length} requests while down`);
      const wrong = whileDown.filter((s) =>
        s.status !== 503 || s.code !== "database_unavailable" || !s.retryAfter ||
        s.ms > PROMPT_MS
      );
      const summary = (list: Sample[]) =>
        list.slice(0, 8).map((s) =>
          `sent ${s.sentAt - downAt} ms into the outage → ${s.status} ${s.code ?? ""} ` +
          `after ${s.ms} ms`
        ).join("\n");
      assert.deepEqual(
        wrong.length,
        0,
        `${wrong.length} of ${whileDown.length} requests sent while PostgreSQL was down ` +
          `were not a prompt 503 database_unavailable:\n${summary(wrong)}`,
      );
      assert.notEqual(recoveredAfter, null, "no 200 within 15 s of the database's return");
    } finally {
      await stack.close();
    }
  },
});
