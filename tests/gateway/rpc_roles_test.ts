/**
 * Each credential runs the RPC as the role PostgREST would switch to, with the
 * request's JWT claims and request GUCs visible to SQL for that transaction only,
 * and named JSON arguments typed by the function's declared parameter types.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import * as jose from "jose";
import {
  ANON_KEY,
  JWT_SECRET,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "../../local/gateway/keys.ts";
import { mintAccessToken } from "../../local/gateway/jwt.ts";
import { startGateway } from "./instance.ts";

const SUFFIX = crypto.randomUUID().replaceAll("-", "").slice(0, 8);
const WHOAMI = `gw_test_whoami_${SUFFIX}`;
const ECHO = `gw_test_echo_${SUFFIX}`;
const SERIES = `gw_test_series_${SUFFIX}`;
const ROWS = `gw_test_rows_${SUFFIX}`;
const NOTHING = `gw_test_nothing_${SUFFIX}`;
const WHOLE = `gw_test_whole_${SUFFIX}`;

Deno.test("RPC runs as the caller's role with PostgREST's request settings", async (t) => {
  // Mid-migration, so every kind of key and token is live (keys.ts, ProjectKeys).
  const gateway = await startGateway({ PROJECT_KEYS: "both" });
  const db = postgres(gateway.dbUrl, { max: 1, onnotice: () => {} });
  const userId = crypto.randomUUID();
  const signing = gateway.signing;
  const es256 = await mintAccessToken(userId, signing, { alg: "ES256", email: "a@example.test" });
  const hs256 = await mintAccessToken(userId, signing, { alg: "HS256" });

  const call = async (name: string, headers: Record<string, string>, args: unknown = {}) => {
    const response = await fetch(`${gateway.url}/rest/v1/rpc/${name}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-test-header": "visible", ...headers },
      body: JSON.stringify(args),
    });
    const text = await response.text();
    return { status: response.status, body: text === "" ? null : JSON.parse(text) };
  };

  try {
    await db.unsafe(`
      create function public.${WHOAMI}() returns jsonb language sql stable as $$
        select jsonb_build_object(
          'current_user', current_user,
          'auth_role', auth.role(),
          'auth_uid', auth.uid(),
          'email', auth.jwt() ->> 'email',
          'method', current_setting('request.method', true),
          'path', current_setting('request.path', true),
          'header', current_setting('request.headers', true)::jsonb ->> 'x-test-header',
          'statement_timeout', current_setting('statement_timeout'),
          'search_path', current_setting('search_path'))
      $$;
      create function public.${ECHO}(p_id uuid, p_count int, p_data jsonb, p_tags text[],
                                     p_at timestamptz, p_note text default 'default note')
      returns jsonb language sql as $$
        select jsonb_build_object('id', p_id, 'count_plus_one', p_count + 1, 'data', p_data,
                                  'tags', p_tags, 'epoch', extract(epoch from p_at)::bigint, 'note', p_note)
      $$;
      create function public.${SERIES}(p_n int) returns setof int language sql as
        'select generate_series(1, p_n)';
      create function public.${ROWS}() returns table (id int, name text) language sql as
        $$ values (1, 'a'), (2, 'b') $$;
      create function public.${NOTHING}() returns void language sql as 'select';
      create function public.${WHOLE}(jsonb) returns jsonb language sql as 'select $1';
      grant execute on function public.${WHOAMI}(), public.${ECHO}(uuid, int, jsonb, text[], timestamptz, text),
        public.${SERIES}(int), public.${ROWS}(), public.${NOTHING}(), public.${WHOLE}(jsonb)
        to anon, authenticated, service_role;
    `);
    const [{ anonTimeout }] = await db<{ anonTimeout: string | null }[]>`
      select (select split_part(setting, '=', 2) from pg_db_role_setting s
              join pg_roles r on r.oid = s.setrole, unnest(s.setconfig) setting
              where r.rolname = 'anon' and setting like 'statement_timeout=%') as "anonTimeout"`;

    const cases: [string, Record<string, string>, string, string | null][] = [
      ["the publishable key alone", { apikey: PUBLISHABLE_KEY }, "anon", null],
      ["the secret key", { apikey: SECRET_KEY }, "service_role", null],
      [
        "the secret key as bearer (supabase-js)",
        { apikey: SECRET_KEY, authorization: `Bearer ${SECRET_KEY}` },
        "service_role",
        null,
      ],
      ["the legacy anon key", { apikey: ANON_KEY }, "anon", null],
      [
        "the legacy service_role key",
        { apikey: SERVICE_ROLE_KEY, authorization: `Bearer ${SERVICE_ROLE_KEY}` },
        "service_role",
        null,
      ],
      [
        "an ES256 user token",
        { apikey: PUBLISHABLE_KEY, authorization: `Bearer ${es256}` },
        "authenticated",
        userId,
      ],
      [
        "an HS256 user token",
        { apikey: PUBLISHABLE_KEY, authorization: `Bearer ${hs256}` },
        "authenticated",
        userId,
      ],
    ];
    for (const [credential, headers, role, uid] of cases) {
      await t.step(`${credential} runs as ${role}`, async () => {
        const { status, body } = await call(WHOAMI, headers);
        assert.equal(status, 200);
        assert.equal(body.current_user, role);
        assert.equal(body.auth_role, role);
        assert.equal(body.auth_uid, uid);
      });
    }

    await t.step("request.jwt.claims, method, path and headers are visible to SQL", async () => {
      const { body } = await call(WHOAMI, {
        apikey: PUBLISHABLE_KEY,
        authorization: `Bearer ${es256}`,
      });
      assert.equal(body.email, "a@example.test");
      assert.equal(body.method, "POST");
      assert.equal(body.path, `/rpc/${WHOAMI}`);
      assert.equal(body.header, "visible");
      assert.equal(body.search_path, "public, extensions");
    });

    await t.step("a request never sees the claims or role of the one before it", async () => {
      for (let i = 0; i < 5; i++) {
        await call(WHOAMI, { apikey: PUBLISHABLE_KEY, authorization: `Bearer ${es256}` });
        const { body } = await call(WHOAMI, { apikey: PUBLISHABLE_KEY });
        assert.equal(body.auth_uid, null);
        assert.equal(body.current_user, "anon");
      }
      const [row] = await db`select current_setting('request.jwt.claims', true) as claims`;
      assert.ok(!row.claims);
    });

    await t.step("the impersonated role's own settings apply, to that request only", async () => {
      const { body } = await call(WHOAMI, { apikey: PUBLISHABLE_KEY });
      if (anonTimeout) assert.equal(body.statement_timeout, anonTimeout);
      const service = await call(WHOAMI, { apikey: SECRET_KEY });
      assert.notEqual(service.body.statement_timeout, anonTimeout ?? "never");
    });

    await t.step("named arguments are typed by the declared parameter types", async () => {
      const id = crypto.randomUUID();
      const { status, body } = await call(ECHO, { apikey: SECRET_KEY }, {
        p_id: id,
        p_count: "41",
        p_data: { nested: [1, { a: true }] },
        p_tags: ["x", "y"],
        p_at: "2026-01-01T00:00:00Z",
      });
      assert.equal(status, 200);
      assert.deepEqual(body, {
        id,
        count_plus_one: 42,
        data: { nested: [1, { a: true }] },
        tags: ["x", "y"],
        epoch: 1767225600,
        note: "default note",
      });
    });

    await t.step("a value of the wrong type is the database's 400 (22P02)", async () => {
      const { status, body } = await call(ECHO, { apikey: SECRET_KEY }, {
        p_id: "not-a-uuid",
        p_count: 1,
        p_data: {},
        p_tags: [],
        p_at: "2026-01-01T00:00:00Z",
      });
      assert.equal(status, 400);
      assert.equal(body.code, "22P02");
    });

    await t.step("setof returns an array, table returns objects, void returns 204", async () => {
      assert.deepEqual((await call(SERIES, { apikey: SECRET_KEY }, { p_n: 3 })).body, [1, 2, 3]);
      assert.deepEqual((await call(SERIES, { apikey: SECRET_KEY }, { p_n: 0 })).body, []);
      assert.deepEqual((await call(ROWS, { apikey: SECRET_KEY })).body, [
        { id: 1, name: "a" },
        { id: 2, name: "b" },
      ]);
      const nothing = await call(NOTHING, { apikey: SECRET_KEY });
      assert.equal(nothing.status, 204);
      assert.equal(nothing.body, null);
    });

    await t.step("a single unnamed jsonb parameter receives the whole body", async () => {
      const { body } = await call(WHOLE, { apikey: SECRET_KEY }, { any: "thing", n: 1 });
      assert.deepEqual(body, { any: "thing", n: 1 });
    });

    await t.step("the JWKS serves the public key that verifies user tokens", async () => {
      const response = await fetch(`${gateway.url}/auth/v1/.well-known/jwks.json`);
      assert.equal(response.status, 200);
      const jwks = await response.json();
      assert.equal(jwks.keys.length, 1);
      assert.equal(jwks.keys[0].d, undefined);
      const { payload } = await jose.jwtVerify(es256, jose.createLocalJWKSet(jwks));
      assert.equal(payload.sub, userId);
    });

    await t.step("the legacy keys are HS256 JWTs of the JWT secret", async () => {
      const secret = new TextEncoder().encode(JWT_SECRET);
      assert.equal((await jose.jwtVerify(ANON_KEY, secret)).payload.role, "anon");
      assert.equal((await jose.jwtVerify(SERVICE_ROLE_KEY, secret)).payload.role, "service_role");
    });
  } finally {
    await db.unsafe(`
      drop function if exists public.${WHOAMI}();
      drop function if exists public.${ECHO}(uuid, int, jsonb, text[], timestamptz, text);
      drop function if exists public.${SERIES}(int);
      drop function if exists public.${ROWS}();
      drop function if exists public.${NOTHING}();
      drop function if exists public.${WHOLE}(jsonb);
    `);
    await db.end();
    await gateway.stop();
  }
});

/**
 * The hosted platform's limits, reproduced: authenticator logs in with an 8 s
 * statement_timeout and lock_timeout, anon and authenticated carry their own
 * 3 s / 8 s statement_timeout (supabase/postgres migrations, copied in
 * local/sql/supabase-bootstrap.sql), and PostgREST runs a STABLE or IMMUTABLE
 * function, or any GET, in a read-only transaction. A bundle function that
 * breaks one of these on the platform must break here first.
 */
Deno.test("RPC runs under the hosted time limits and read-only rules", async (t) => {
  const gateway = await startGateway();
  const db = postgres(gateway.dbUrl, { max: 2, onnotice: () => {} });
  const token = await mintAccessToken(crypto.randomUUID(), gateway.signing);
  const as = {
    anon: { apikey: PUBLISHABLE_KEY },
    authenticated: { apikey: PUBLISHABLE_KEY, authorization: `Bearer ${token}` },
    service_role: { apikey: SECRET_KEY },
  };
  const schema = `gw_test_limits_${SUFFIX}`;
  const limits = `gw_test_limits_${SUFFIX}`;
  const sleep = `gw_test_sleep_${SUFFIX}`;
  const stableWrite = `gw_test_stable_write_${SUFFIX}`;
  const volatileWrite = `gw_test_volatile_write_${SUFFIX}`;
  const stableEcho = `gw_test_stable_echo_${SUFFIX}`;
  const ownTimeout = `gw_test_own_timeout_${SUFFIX}`;
  const waitForLock = `gw_test_wait_lock_${SUFFIX}`;
  const call = async (
    name: string,
    headers: Record<string, string>,
    args: unknown = {},
    method = "POST",
    query = "",
  ) => {
    const response = await fetch(`${gateway.url}/rest/v1/rpc/${name}${query}`, {
      method,
      headers: method === "POST" ? { "content-type": "application/json", ...headers } : headers,
      body: method === "POST" ? JSON.stringify(args) : undefined,
      // Without the limits a call would wait as long as its lock or sleep.
      signal: AbortSignal.timeout(15_000),
    });
    const text = await response.text();
    return { status: response.status, body: text === "" ? null : JSON.parse(text) };
  };

  try {
    // Writes go to a test-only schema through security definer functions, so
    // the API roles need no table grants.
    await db.unsafe(`
      create schema ${schema};
      create table ${schema}.writes (id serial primary key, note text);
      alter table ${schema}.writes enable row level security;
      insert into ${schema}.writes (note) values ('locked by the test');
      create function public.${limits}() returns jsonb language sql stable as $$
        select jsonb_build_object('statement_timeout', current_setting('statement_timeout'),
                                  'lock_timeout', current_setting('lock_timeout'),
                                  'read_only', current_setting('transaction_read_only'))
      $$;
      create function public.${sleep}(p_seconds float8) returns int language sql as
        'select 1 from pg_sleep(p_seconds)';
      create function public.${volatileWrite}(p_note text) returns int
      language sql volatile security definer set search_path = '' as
        $$ insert into ${schema}.writes (note) values (p_note) returning id $$;
      -- PostgreSQL refuses a write written directly in a non-volatile body
      -- (0A000); mislabelled functions write through a volatile callee.
      create function public.${stableWrite}(p_note text) returns int
      language sql stable as $$ select public.${volatileWrite}(p_note) $$;
      create function public.${stableEcho}(p_n int, p_tags text[]) returns jsonb
      language sql immutable as $$ select jsonb_build_object('n_plus_one', p_n + 1, 'tags', p_tags) $$;
      create function public.${ownTimeout}(p_seconds float8) returns int language sql
      set statement_timeout = '1s' as 'select 1 from pg_sleep(p_seconds)';
      create function public.${waitForLock}() returns int language sql security definer
      set search_path = '' set statement_timeout = '20s' as
        $$ update ${schema}.writes set note = 'updated' where id = 1 returning id $$;
    `);

    await t.step("the roles carry the hosted settings", async () => {
      const rows = await db<{ role: string; config: string[] | null }[]>`
        select rolname as role, rolconfig as config from pg_roles
        where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')`;
      const config = Object.fromEntries(rows.map((row) => [row.role, row.config ?? []]));
      assert.ok(config.anon.includes("statement_timeout=3s"), String(config.anon));
      assert.ok(config.authenticated.includes("statement_timeout=8s"));
      assert.ok(config.authenticator.includes("statement_timeout=8s"));
      assert.ok(config.authenticator.includes("lock_timeout=8s"));
      assert.deepEqual(config.service_role, []);
    });

    await t.step(
      "each role runs with the timeouts PostgREST gives it on the platform",
      async () => {
        const seen = Object.fromEntries(
          await Promise.all(
            Object.entries(as).map(async (
              [role, headers],
            ) => [role, (await call(limits, headers)).body]),
          ),
        );
        assert.deepEqual(seen, {
          anon: { statement_timeout: "3s", lock_timeout: "8s", read_only: "on" },
          authenticated: { statement_timeout: "8s", lock_timeout: "8s", read_only: "on" },
          // No settings of its own: authenticator's login settings stay in force.
          service_role: { statement_timeout: "8s", lock_timeout: "8s", read_only: "on" },
        });
      },
    );

    await t.step("a 9 s statement is cancelled (57014 → 500) for every role", async () => {
      const started = performance.now();
      const answers = await Promise.all([
        call(sleep, as.anon, { p_seconds: 4 }),
        call(sleep, as.authenticated, { p_seconds: 9 }),
        call(sleep, as.service_role, { p_seconds: 9 }),
      ]);
      const elapsed = performance.now() - started;
      for (const answer of answers) {
        assert.equal(answer.status, 500);
        assert.equal(answer.body.code, "57014");
        assert.match(answer.body.message, /statement timeout/);
      }
      assert.ok(elapsed < 8_900, `took ${elapsed} ms`);
      // Within the limit the same function answers.
      assert.equal((await call(sleep, as.service_role, { p_seconds: 0.1 })).status, 200);
    });

    await t.step("a function's own statement_timeout governs its call (hoisted)", async () => {
      const answer = await call(ownTimeout, as.service_role, { p_seconds: 2 });
      assert.equal(answer.status, 500);
      assert.equal(answer.body.code, "57014");
    });

    await t.step("a row lock held past 8 s fails with lock_timeout (55P03 → 500)", async () => {
      let release!: () => void;
      const released = new Promise<void>((resolve) => release = resolve);
      let locked!: () => void;
      const lockTaken = new Promise<void>((resolve) => locked = resolve);
      const holder = db.begin(async (tx) => {
        await tx.unsafe(`select 1 from ${schema}.writes where id = 1 for update`);
        locked();
        await released;
      });
      try {
        await lockTaken;
        const answer = await call(waitForLock, as.service_role);
        assert.equal(answer.status, 500);
        assert.equal(answer.body.code, "55P03");
      } finally {
        release();
        await holder;
      }
    });

    await t.step("a STABLE function that writes fails read-only (25006 → 405)", async () => {
      const answer = await call(stableWrite, as.service_role, { p_note: "from stable" });
      assert.equal(answer.status, 405);
      assert.equal(answer.body.code, "25006");
      const [{ count }] = await db.unsafe(
        `select count(*)::int as count from ${schema}.writes where note = 'from stable'`,
      );
      assert.equal(count, 0);
    });

    await t.step("a VOLATILE function that writes works on POST", async () => {
      const answer = await call(volatileWrite, as.service_role, { p_note: "from volatile" });
      assert.equal(answer.status, 200);
      assert.equal(typeof answer.body, "number");
    });

    await t.step("GET runs any function read-only: a VOLATILE writer gets 405 25006", async () => {
      const answer = await call(volatileWrite, as.service_role, {}, "GET", "?p_note=from+get");
      assert.equal(answer.status, 405);
      assert.equal(answer.body.code, "25006");
    });

    await t.step("GET passes the query string as arguments, typed by the function", async () => {
      const answer = await call(stableEcho, as.service_role, {}, "GET", "?p_n=41&p_tags={a,b}");
      assert.equal(answer.status, 200);
      assert.deepEqual(answer.body, { n_plus_one: 42, tags: ["a", "b"] });
    });
  } finally {
    await db.unsafe(`
      drop function if exists public.${limits}();
      drop function if exists public.${sleep}(float8);
      drop function if exists public.${stableWrite}(text);
      drop function if exists public.${volatileWrite}(text);
      drop function if exists public.${stableEcho}(int, text[]);
      drop function if exists public.${ownTimeout}(float8);
      drop function if exists public.${waitForLock}();
      drop schema if exists ${schema} cascade;
    `);
    await db.end();
    await gateway.stop();
  }
});
