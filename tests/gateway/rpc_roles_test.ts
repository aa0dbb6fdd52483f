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
  loadSigningKeys,
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
  const { privateJwk } = await loadSigningKeys();
  const userId = crypto.randomUUID();
  const signing = { url: gateway.url, jwtSecret: JWT_SECRET, privateJwk };
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
