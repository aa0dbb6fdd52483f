/**
 * Database errors come back as PostgREST returns them: the SQLSTATE mapped to
 * the same HTTP status (local/gateway/postgrest_errors.ts), and the body
 * `{code, message, details, hint}`.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { JWT_SECRET, PUBLISHABLE_KEY, SECRET_KEY } from "../../local/gateway/keys.ts";
import { mintAccessToken } from "../../local/gateway/jwt.ts";
import { startGateway } from "./instance.ts";

const SUFFIX = crypto.randomUUID().replaceAll("-", "").slice(0, 8);
const RAISE = `gw_test_raise_${SUFFIX}`;
const PRIVATE = `gw_test_private_${SUFFIX}`;
const OVERLOADED = `gw_test_overloaded_${SUFFIX}`;

/** [SQLSTATE, message, status PostgREST answers with] */
const TABLE: [string, string, number][] = [
  ["P0001", "plain raise", 400],
  ["PT409", "already_connected", 409],
  ["PT429", "cooldown", 429],
  ["PT503", "no_active_servers", 503],
  ["PT404", "not_found", 404],
  ["23505", "duplicate key value", 409],
  ["23503", "foreign key violation", 409],
  ["23502", "null value in column", 400],
  ["22P02", "invalid input syntax", 400],
  ["25006", "read-only transaction", 405],
  ["28000", "invalid authorization", 403],
  ["40001", "could not serialize", 500],
  ["40P01", "deadlock detected", 500],
  ["53300", "too many connections", 503],
  ["53400", "configuration limit exceeded", 500],
  ["54000", "program limit exceeded", 500],
  ["55P03", "lock not available", 500],
  ["57014", "canceling statement due to statement timeout", 500],
  ["57P01", "terminating connection", 503],
  ["08006", "connection failure", 503],
  ["0P000", "invalid role specification", 403],
  ["P0002", "no data found", 500],
  ["XX000", "internal error", 500],
  ["42883", "function does not exist", 404],
  ["42883", "function xmlagg(text) does not exist", 406],
  ["42P01", "relation does not exist", 404],
  ["42P17", "infinite recursion detected", 500],
  ["21000", "UPDATE requires a WHERE clause", 400],
  ["21000", "more than one row returned by a subquery", 500],
  ["22023", "invalid parameter value", 400],
  ["HV000", "fdw error", 500],
];

Deno.test("database errors map to HTTP as PostgREST maps them", async (t) => {
  const gateway = await startGateway();
  const db = postgres(gateway.dbUrl, { max: 1, onnotice: () => {} });
  const userToken = await mintAccessToken(crypto.randomUUID(), gateway.signing);
  const rpc = (name: string, args: unknown, headers: Record<string, string> = {}) =>
    fetch(`${gateway.url}/rest/v1/rpc/${name}`, {
      method: "POST",
      headers: { apikey: SECRET_KEY, "content-type": "application/json", ...headers },
      body: JSON.stringify(args),
    });

  try {
    await db.unsafe(`
      create function public.${RAISE}(p_code text, p_message text) returns int
      language plpgsql as $$
      begin
        raise exception using errcode = p_code, message = p_message,
          detail = '{"retry_after_ms": 1000}', hint = 'a hint';
      end $$;
      create function public.${PRIVATE}() returns int language sql as 'select 1';
      revoke execute on function public.${PRIVATE}() from public, anon, authenticated;
      create function public.${OVERLOADED}(a int default 1) returns int language sql as 'select a';
      create function public.${OVERLOADED}(b text default 'x') returns int language sql as 'select 2';
      grant execute on function public.${RAISE}(text, text) to anon, authenticated, service_role;
    `);

    for (const [code, message, status] of TABLE) {
      await t.step(`${code} "${message}" answers ${status}`, async () => {
        const response = await rpc(RAISE, { p_code: code, p_message: message });
        assert.equal(response.status, status);
        assert.deepEqual(await response.json(), {
          code,
          message,
          details: '{"retry_after_ms": 1000}',
          hint: "a hint",
        });
        assert.equal(response.headers.get("access-control-allow-origin"), "*");
      });
    }

    await t.step("42501 answers 401 to anon and 403 to a signed-in user", async () => {
      const anon = await rpc(PRIVATE, {}, { apikey: PUBLISHABLE_KEY });
      assert.equal(anon.status, 401);
      assert.equal((await anon.json()).code, "42501");
      const user = await rpc(PRIVATE, {}, {
        apikey: PUBLISHABLE_KEY,
        authorization: `Bearer ${userToken}`,
      });
      assert.equal(user.status, 403);
      assert.equal((await user.json()).code, "42501");
    });

    await t.step("a token whose role does not exist answers 401 (22023)", async () => {
      const token = await mintAccessToken(crypto.randomUUID(), {
        url: gateway.url,
        jwtSecret: JWT_SECRET,
      }, { alg: "HS256", role: "no_such_role" });
      const response = await rpc(RAISE, { p_code: "P0001", p_message: "x" }, {
        authorization: `Bearer ${token}`,
      });
      assert.equal(response.status, 401);
      assert.equal((await response.json()).code, "22023");
    });

    await t.step("an unknown function answers 404 PGRST202", async () => {
      const response = await rpc(`gw_test_missing_${SUFFIX}`, { p_x: 1 });
      assert.equal(response.status, 404);
      const body = await response.json();
      assert.equal(body.code, "PGRST202");
      assert.equal(
        body.message,
        `Could not find the function public.gw_test_missing_${SUFFIX}(p_x) in the schema cache`,
      );
    });

    await t.step("unknown argument names answer 404 PGRST202, not a SQL error", async () => {
      const response = await rpc(RAISE, { p_code: "P0001", "p_message; drop table x": "" });
      assert.equal(response.status, 404);
      assert.equal((await response.json()).code, "PGRST202");
    });

    await t.step("an ambiguous overload answers 300 PGRST203", async () => {
      const response = await rpc(OVERLOADED, {});
      assert.equal(response.status, 300);
      assert.equal((await response.json()).code, "PGRST203");
    });

    await t.step("a malformed body answers 400 PGRST102", async () => {
      const response = await fetch(`${gateway.url}/rest/v1/rpc/${RAISE}`, {
        method: "POST",
        headers: { apikey: SECRET_KEY, "content-type": "application/json" },
        body: "{not json",
      });
      assert.equal(response.status, 400);
      assert.equal((await response.json()).code, "PGRST102");
    });

    await t.step("PUT, PATCH and DELETE on an RPC answer 405 PGRST101", async () => {
      for (const method of ["PUT", "PATCH", "DELETE"]) {
        const response = await fetch(`${gateway.url}/rest/v1/rpc/${RAISE}`, {
          method,
          headers: { apikey: SECRET_KEY },
        });
        assert.equal(response.status, 405, method);
        assert.deepEqual(await response.json(), {
          code: "PGRST101",
          message: `Cannot use the ${method} method on RPC`,
          details: null,
          hint: null,
        });
      }
    });

    // What PostgREST does but the gateway does not: answered 400 PGRST127
    // (PostgREST's "Feature not implemented") instead of silently ignored.
    const notImplemented: [string, string, Record<string, string>, string?][] = [
      ["a select on the result", "?select=n", {}],
      ["a filter on the result", "?n=eq.1", {}],
      ["an unknown query parameter", "?anything=1", {}],
      ["Prefer: count=exact (rpc(fn, args, { count }))", "", { prefer: "count=exact" }],
      ["Prefer: tx=rollback", "", { prefer: "tx=rollback" }],
      ["Prefer: return=minimal", "", { prefer: "handling=lenient, return=minimal" }],
      ["Prefer: timezone=…", "", { prefer: "timezone=Europe/Paris" }],
      ["Accept: text/csv (csv())", "", { accept: "text/csv" }],
      ["Accept: the single-object type (single())", "", {
        accept: "application/vnd.pgrst.object+json",
      }],
      ["Accept: nulls stripped (stripNulls())", "", {
        accept: "application/vnd.pgrst.array+json;nulls=stripped",
      }],
      ["Accept: a query plan (explain())", "", { accept: "application/vnd.pgrst.plan+json" }],
      ["a form-encoded body", "", { "content-type": "application/x-www-form-urlencoded" }],
      ["HEAD (rpc(fn, args, { head: true }))", "", {}, "HEAD"],
      ["a reserved query parameter on GET", "?p_code=P0001&limit=1", {}, "GET"],
    ];
    for (const [what, query, headers, method] of notImplemented) {
      await t.step(`${what} answers 400 PGRST127, not implemented`, async () => {
        const response = await fetch(`${gateway.url}/rest/v1/rpc/${RAISE}${query}`, {
          method: method ?? "POST",
          headers: { apikey: SECRET_KEY, "content-type": "application/json", ...headers },
          body: method ? undefined : JSON.stringify({ p_code: "P0001", p_message: "ran" }),
        });
        assert.equal(response.status, 400);
        if (method === "HEAD") return;
        const body = await response.json();
        assert.equal(body.code, "PGRST127");
        assert.equal(body.message, "Feature not implemented");
        assert.match(body.details, /is not implemented by the local gateway$/);
      });
    }

    await t.step("an Accept PostgREST cannot produce answers 406 PGRST107", async () => {
      const response = await rpc(RAISE, { p_code: "P0001", p_message: "ran" }, {
        accept: "image/png, text/html;q=0.9",
      });
      assert.equal(response.status, 406);
      assert.deepEqual(await response.json(), {
        code: "PGRST107",
        message: "None of these media types are available: image/png, text/html;q=0.9",
        details: null,
        hint: null,
      });
    });

    await t.step("what supabase-js and browsers send for rpc() is served", async () => {
      const sent: Record<string, string>[] = [
        { accept: "application/json", "content-profile": "public" },
        { accept: "text/html, */*;q=0.8" },
        { accept: "application/vnd.pgrst.array+json" },
        { "content-type": "application/json; charset=utf-8", prefer: "handling=lenient" },
        { prefer: "some-future-preference" },
      ];
      for (const headers of sent) {
        const response = await rpc(RAISE, { p_code: "P0001", p_message: "ran" }, headers);
        assert.equal(response.status, 400, JSON.stringify(headers));
        assert.equal((await response.json()).message, "ran", JSON.stringify(headers));
      }
    });

    await t.step("an unknown Prefer with handling=strict answers 400 PGRST122", async () => {
      const response = await rpc(RAISE, { p_code: "P0001", p_message: "ran" }, {
        prefer: "handling=strict, some-future-preference",
      });
      assert.equal(response.status, 400);
      assert.deepEqual(await response.json(), {
        code: "PGRST122",
        message: "Invalid preferences given with handling=strict",
        details: "Invalid preferences: some-future-preference",
        hint: null,
      });
    });

    await t.step("GET reads the schema from Accept-Profile (PGRST106)", async () => {
      const response = await fetch(
        `${gateway.url}/rest/v1/rpc/${RAISE}?p_code=P0001&p_message=x`,
        { headers: { apikey: SECRET_KEY, "accept-profile": "auth" } },
      );
      assert.equal(response.status, 406);
      assert.equal((await response.json()).code, "PGRST106");
    });
  } finally {
    await db.unsafe(`
      drop function if exists public.${RAISE}(text, text);
      drop function if exists public.${PRIVATE}();
      drop function if exists public.${OVERLOADED}(int);
      drop function if exists public.${OVERLOADED}(text);
    `);
    await db.end();
    await gateway.stop();
  }
});
