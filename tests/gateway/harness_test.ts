/**
 * The e2e harness (tests/e2e/harness.ts) gives every test a working stack:
 * users that exist, tokens the stack accepts, and clients that run as the
 * role their credentials name.
 */
import assert from "node:assert/strict";
import {
  anonClient,
  closeStack,
  createUser,
  getStack,
  mintAccessToken,
  serviceClient,
  sql,
  userClient,
} from "../e2e/harness.ts";

const WHOAMI = `gw_test_harness_${crypto.randomUUID().replaceAll("-", "").slice(0, 8)}`;

Deno.test("the e2e harness yields users, tokens and clients the stack accepts", async (t) => {
  const stack = await getStack();
  const db = await sql();
  try {
    await db.unsafe(`
      create function public.${WHOAMI}() returns jsonb language sql stable as $$
        select jsonb_build_object('role', current_user, 'uid', auth.uid())
      $$;
      grant execute on function public.${WHOAMI}() to anon, authenticated, service_role;
    `);

    await t.step("getStack() names a reachable API and database", async () => {
      assert.match(stack.url, /^https?:\/\//);
      assert.match(stack.publishableKey, /^sb_publishable_/);
      assert.match(stack.secretKey, /^sb_secret_/);
      const [{ one }] = await db`select 1 as one`;
      assert.equal(one, 1);
    });

    const user = await createUser();
    await t.step("createUser() inserts a confirmed user into auth.users", async () => {
      const [row] =
        await db`select email, email_confirmed_at from auth.users where id = ${user.id}`;
      assert.equal(row.email, user.email);
      assert.ok(row.email_confirmed_at);
    });

    for (const alg of ["ES256", "HS256"] as const) {
      await t.step(`an ${alg} access token makes userClient() run as that user`, async () => {
        const token = await mintAccessToken(user.id, { alg });
        const { data, error } = await (await userClient(token)).rpc(WHOAMI);
        assert.equal(error, null);
        assert.deepEqual(data, { role: "authenticated", uid: user.id });
      });
    }

    await t.step("an expired access token is refused with 401", async () => {
      const token = await mintAccessToken(user.id, { expiresIn: -120 });
      const { status, error } = await (await userClient(token)).rpc(WHOAMI);
      assert.equal(status, 401);
      assert.ok(error);
    });

    await t.step("serviceClient() runs as service_role, anonClient() as anon", async () => {
      assert.deepEqual((await (await serviceClient()).rpc(WHOAMI)).data, {
        role: "service_role",
        uid: null,
      });
      assert.deepEqual((await (await anonClient()).rpc(WHOAMI)).data, { role: "anon", uid: null });
    });

    await db`delete from auth.users where id = ${user.id}`;
  } finally {
    await db.unsafe(`drop function if exists public.${WHOAMI}()`);
    await closeStack();
  }
});
