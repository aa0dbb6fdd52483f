/**
 * The gateway's Auth gives sessions the way Supabase Auth does, driven through
 * supabase-js's own `auth.admin.createUser`, `signInWithPassword` and
 * `refreshSession`: tokens signed as the project's kind signs them, GoTrue's
 * claims (app_metadata visible to SQL through `auth.jwt()`), refresh-token
 * rotation that refuses a stolen token's reuse, and GoTrue's error answers.
 * The fixture project (tests/gateway/fixtures/supabase/config.toml) sets a
 * 1 s `refresh_token_reuse_interval`, so the test can wait it out.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import * as jose from "jose";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import {
  ANON_KEY,
  JWT_SECRET,
  type ProjectKeys,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "../../local/gateway/keys.ts";
import { startGateway } from "./instance.ts";

const SUFFIX = crypto.randomUUID().replaceAll("-", "").slice(0, 8);
const CLAIMS_FN = `gw_test_app_metadata_${SUFFIX}`;
const REUSE_INTERVAL_MS = 1_000;

const client = (url: string, key: string): SupabaseClient =>
  createClient(url, key, { auth: { persistSession: false, autoRefreshToken: false } });

function keysOf(kind: ProjectKeys) {
  return kind === "legacy"
    ? { publishable: ANON_KEY, secret: SERVICE_ROLE_KEY }
    : { publishable: PUBLISHABLE_KEY, secret: SECRET_KEY };
}

for (const kind of ["signing", "legacy", "both"] as const) {
  Deno.test(`PROJECT_KEYS=${kind}: supabase-js signs in, refreshes, and calls RPC as the user`, async (t) => {
    const gateway = await startGateway({ PROJECT_KEYS: kind });
    const db = postgres(gateway.dbUrl, { max: 1, onnotice: () => {} });
    const keys = keysOf(kind);
    const email = `gw-auth-${kind}-${SUFFIX}@backend.invalid`;
    const password = crypto.randomUUID();
    try {
      await db.unsafe(`
        create function public.${CLAIMS_FN}_${kind}() returns jsonb language sql stable as $$
          select jsonb_build_object('role', current_user, 'uid', auth.uid(),
                                    'app_metadata', auth.jwt() -> 'app_metadata')
        $$;
        grant execute on function public.${CLAIMS_FN}_${kind}() to authenticated;
      `);

      const admin = client(gateway.url, keys.secret);
      const created = await admin.auth.admin.createUser({
        email,
        password,
        email_confirm: true,
        app_metadata: { device_backend: `srv-${kind}` },
      });
      assert.equal(created.error, null, created.error?.message);
      const user = created.data.user!;
      assert.deepEqual(user.app_metadata, {
        provider: "email",
        providers: ["email"],
        device_backend: `srv-${kind}`,
      });

      const anon = client(gateway.url, keys.publishable);
      const signedIn = await anon.auth.signInWithPassword({ email, password });
      assert.equal(signedIn.error, null, signedIn.error?.message);
      const session = signedIn.data.session!;

      await t.step("the access token is signed like the hosted project of this kind", async () => {
        const header = jose.decodeProtectedHeader(session.access_token);
        if (kind === "legacy") {
          assert.deepEqual(header, { alg: "HS256", typ: "JWT" });
          await jose.jwtVerify(session.access_token, new TextEncoder().encode(JWT_SECRET));
        } else {
          assert.equal(header.alg, "ES256");
          assert.equal(header.kid, gateway.signing.privateJwk.kid);
          const jwks = await (await fetch(`${gateway.url}/auth/v1/.well-known/jwks.json`)).json();
          await jose.jwtVerify(session.access_token, jose.createLocalJWKSet(jwks));
        }
      });

      await t.step("its claims are GoTrue's", () => {
        const claims = jose.decodeJwt(session.access_token);
        assert.equal(claims.iss, `${gateway.url}/auth/v1`);
        assert.equal(claims.aud, "authenticated");
        assert.equal(claims.role, "authenticated");
        assert.equal(claims.sub, user.id);
        assert.equal(claims.email, email);
        assert.deepEqual(claims.app_metadata, user.app_metadata);
        assert.deepEqual(claims.user_metadata, {});
        assert.equal(claims.exp! - claims.iat!, 3600, "exp is jwt_expiry after iat");
        assert.equal(claims.exp, session.expires_at);
        assert.match(String(claims.session_id), /^[0-9a-f-]{36}$/);
        assert.equal(claims.aal, "aal1");
        const [amr] = claims.amr as { method: string; timestamp: number }[];
        assert.equal(amr.method, "password");
        assert.ok(Math.abs(amr.timestamp - claims.iat!) <= 1);
        assert.equal(claims.is_anonymous, false);
      });

      await t.step("an RPC through the gateway sees the token's app_metadata", async () => {
        const { data, error } = await anon.rpc(`${CLAIMS_FN}_${kind}`);
        assert.equal(error, null, error?.message);
        assert.equal(data.role, "authenticated");
        assert.equal(data.uid, user.id);
        assert.equal(data.app_metadata.device_backend, `srv-${kind}`);
      });

      await t.step("refresh rotates the token and keeps the session", async () => {
        const first = session.refresh_token;
        const refreshed = await anon.auth.refreshSession({ refresh_token: first });
        assert.equal(refreshed.error, null, refreshed.error?.message);
        const second = refreshed.data.session!;
        assert.notEqual(second.refresh_token, first);
        const before = jose.decodeJwt(session.access_token);
        const after = jose.decodeJwt(second.access_token);
        assert.equal(after.session_id, before.session_id);
        assert.deepEqual(after.app_metadata, before.app_metadata);
        assert.deepEqual(after.amr, before.amr, "a refresh is not a new authentication");

        // A client that lost the answer may present the parent of the live token: it gets the live one.
        const retried = await anon.auth.refreshSession({ refresh_token: first });
        assert.equal(retried.error, null, retried.error?.message);
        assert.equal(retried.data.session!.refresh_token, second.refresh_token);

        const third = await anon.auth.refreshSession({ refresh_token: second.refresh_token });
        assert.equal(third.error, null, third.error?.message);
        const live = third.data.session!.refresh_token;

        // Past the reuse interval, an older token is a stolen one: refused, and the session's
        // tokens are revoked, so the live one is refused too once its own interval is over.
        await new Promise((resolve) => setTimeout(resolve, REUSE_INTERVAL_MS + 200));
        const reused = await anon.auth.refreshSession({ refresh_token: first });
        assert.equal(reused.error?.status, 400);
        assert.equal(reused.error?.code, "refresh_token_already_used");
        assert.equal(reused.error?.message, "Invalid Refresh Token: Already Used");
        await new Promise((resolve) => setTimeout(resolve, REUSE_INTERVAL_MS + 200));
        const revoked = await anon.auth.refreshSession({ refresh_token: live });
        assert.equal(revoked.error?.code, "refresh_token_already_used");
      });
    } finally {
      await db`delete from auth.users where email = ${email}`;
      await db.unsafe(`drop function if exists public.${CLAIMS_FN}_${kind}()`);
      await db.end();
      await gateway.stop();
    }
  });
}

Deno.test("the gateway's Auth refuses as GoTrue does", async (t) => {
  const gateway = await startGateway({ PROJECT_KEYS: "signing" });
  const db = postgres(gateway.dbUrl, { max: 1, onnotice: () => {} });
  const email = `gw-auth-refusals-${SUFFIX}@backend.invalid`;
  const unconfirmed = `gw-auth-unconfirmed-${SUFFIX}@backend.invalid`;
  const password = crypto.randomUUID();
  const anon = client(gateway.url, PUBLISHABLE_KEY);
  const admin = client(gateway.url, SECRET_KEY);
  const post = (path: string, headers: Record<string, string>, body: string) =>
    fetch(`${gateway.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
  try {
    assert.equal(
      (await admin.auth.admin.createUser({ email, password, email_confirm: true })).error,
      null,
    );
    assert.equal((await admin.auth.admin.createUser({ email: unconfirmed, password })).error, null);

    await t.step("a wrong password and an unknown user get the same 400", async () => {
      for (
        const attempt of [{ email, password: "wrong" }, { email: `nobody-${email}`, password }]
      ) {
        const { error } = await anon.auth.signInWithPassword(attempt);
        assert.equal(error?.status, 400);
        assert.equal(error?.code, "invalid_credentials");
        assert.equal(error?.message, "Invalid login credentials");
      }
    });

    await t.step("an unconfirmed email cannot sign in", async () => {
      const { error } = await anon.auth.signInWithPassword({ email: unconfirmed, password });
      assert.equal(error?.code, "email_not_confirmed");
    });

    await t.step(
      "without X-Supabase-Api-Version the error body is GoTrue's older shape",
      async () => {
        const response = await post(
          "/auth/v1/token?grant_type=password",
          { apikey: PUBLISHABLE_KEY },
          JSON.stringify({ email, password: "wrong" }),
        );
        assert.equal(response.status, 400);
        assert.equal(response.headers.get("x-sb-error-code"), "invalid_credentials");
        assert.deepEqual(await response.json(), {
          code: 400,
          error_code: "invalid_credentials",
          msg: "Invalid login credentials",
        });
      },
    );

    await t.step("a malformed body is bad_json", async () => {
      for (const body of ["{not json", JSON.stringify({ email: 42, password })]) {
        const response = await post(
          "/auth/v1/token?grant_type=password",
          { apikey: PUBLISHABLE_KEY, "x-supabase-api-version": "2024-01-01" },
          body,
        );
        assert.equal(response.status, 400, body);
        const answer = await response.json();
        assert.equal(answer.code, "bad_json");
        assert.match(answer.message, /^Could not parse request body as JSON: /);
      }
    });

    await t.step("no email is validation_failed; an unknown grant is refused", async () => {
      const noEmail = await post(
        "/auth/v1/token?grant_type=password",
        { apikey: PUBLISHABLE_KEY, "x-supabase-api-version": "2024-01-01" },
        JSON.stringify({ password }),
      );
      assert.deepEqual(await noEmail.json(), {
        code: "validation_failed",
        message: "missing email or phone",
      });
      const grant = await post(
        "/auth/v1/token?grant_type=magic",
        { apikey: PUBLISHABLE_KEY },
        "{}",
      );
      assert.equal(grant.status, 400);
      assert.equal((await grant.json()).msg, "unsupported_grant_type");
    });

    await t.step("no API key, or a foreign one, stops at the gateway with 401", async () => {
      const missing = await post("/auth/v1/token?grant_type=password", {}, "{}");
      assert.equal(missing.status, 401);
      assert.equal((await missing.json()).message, "No API key found in request");
      for (const apikey of ["sb_publishable_not_this_project", ANON_KEY]) {
        const foreign = await post("/auth/v1/token?grant_type=password", { apikey }, "{}");
        assert.equal(foreign.status, 401, apikey);
        await foreign.body?.cancel();
      }
    });

    await t.step(
      "refresh: a missing token is an OAuth error, an unknown one is not found",
      async () => {
        const missing = await post(
          "/auth/v1/token?grant_type=refresh_token",
          { apikey: PUBLISHABLE_KEY },
          "{}",
        );
        assert.equal(missing.status, 400);
        assert.deepEqual(await missing.json(), {
          error: "invalid_request",
          error_description: "refresh_token required",
        });
        const { error } = await anon.auth.refreshSession({ refresh_token: "notarealtoken" });
        assert.equal(error?.code, "refresh_token_not_found");
      },
    );

    await t.step("admin endpoints need the secret key, as on the hosted project", async () => {
      const body = JSON.stringify({ email: `intruder-${email}`, password });
      const asPublishable = await anon.auth.admin.createUser({ email: `intruder-${email}` });
      assert.equal(asPublishable.error?.status, 403);
      assert.equal(asPublishable.error?.code, "not_admin");

      const signedIn = await anon.auth.signInWithPassword({ email, password });
      const asUser = await post("/auth/v1/admin/users", {
        apikey: PUBLISHABLE_KEY,
        authorization: `Bearer ${signedIn.data.session!.access_token}`,
      }, body);
      assert.equal(asUser.status, 403);
      assert.equal((await asUser.json()).error_code, "not_admin");

      const forged = await post("/auth/v1/admin/users", {
        apikey: PUBLISHABLE_KEY,
        authorization: `Bearer ${await new jose.SignJWT({ role: "service_role" })
          .setProtectedHeader({ alg: "HS256" })
          .sign(new TextEncoder().encode("not-the-project-secret-not-the-project-secret"))}`,
      }, body);
      assert.equal(forged.status, 403);
      assert.equal((await forged.json()).error_code, "bad_jwt");

      const [{ count }] = await db`
        select count(*)::int from auth.users where email = ${`intruder-${email}`}`;
      assert.equal(count, 0, "no refused call created a user");

      const duplicate = await admin.auth.admin.createUser({ email, password });
      assert.equal(duplicate.error?.status, 422);
      assert.equal(duplicate.error?.code, "email_exists");
    });
  } finally {
    await db`delete from auth.users where email in ${
      db([email, unconfirmed, `intruder-${email}`])
    }`;
    await db.end();
    await gateway.stop();
  }
});
