/**
 * The real @supabase/server verification, in-process: a signing key made here,
 * its JWKS handed to `supabaseAuth` as the platform would, tokens minted here.
 * The database calls are then checked by what the returned Rpc sends.
 */
import assert from "node:assert/strict";
import { AuthClient } from "@supabase/supabase-js";
import * as jose from "jose";
import { supabaseAuth } from "../../supabase/functions/_shared/auth.ts";
import { ApiError } from "../../supabase/functions/_shared/http.ts";
import { USER_ID } from "./fakes.ts";

const PUBLISHABLE = "sb_publishable_test_key_for_in_process_auth";
const SECRET = "sb_secret_test_key_for_in_process_auth";
const SERVICE_ROLE = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.legacy-signature";

const { privateKey, publicKey } = await jose.generateKeyPair("ES256", { extractable: true });
const kid = crypto.randomUUID();
const jwks = { keys: [{ ...(await jose.exportJWK(publicKey)), kid, alg: "ES256", use: "sig" }] };
const env = {
  url: "http://127.0.0.1:9",
  publishableKeys: { default: PUBLISHABLE },
  secretKeys: { default: SECRET },
  jwks,
};

async function userToken(claims: Record<string, unknown> = {}, expiresIn = "1h", key = privateKey) {
  return await new jose.SignJWT({ role: "authenticated", aud: "authenticated", ...claims })
    .setProtectedHeader({ alg: "ES256", kid })
    .setSubject(USER_ID)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(key);
}

function req(headers: Record<string, string>): Request {
  return new Request("http://localhost/functions/v1/x", { method: "POST", headers });
}

async function rejection(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ApiError, `expected ApiError, got ${error}`);
    return error;
  }
  assert.fail("expected the credentials to be refused");
}

const userOnly = supabaseAuth({ operators: false, env });
const usersAndOperators = supabaseAuth({ operators: true, env, serviceRoleKey: SERVICE_ROLE });

Deno.test("a valid user token identifies the user", async () => {
  const caller = await userOnly(
    req({ authorization: `Bearer ${await userToken()}`, apikey: PUBLISHABLE }),
  );
  assert.equal(caller.kind, "user");
  assert.equal(caller.kind === "user" && caller.userId, USER_ID);
});

for (
  const [name, sub] of [["empty", ""], ["not a UUID", "user_2abc"], ["SQL-looking", "x' or 1=1 --"]]
) {
  Deno.test(`a validly signed token whose sub is ${name} identifies nobody (401)`, async () => {
    const token = await new jose.SignJWT({ role: "authenticated", aud: "authenticated", sub })
      .setProtectedHeader({ alg: "ES256", kid })
      .setExpirationTime("1h")
      .sign(privateKey);
    const error = await rejection(userOnly(req({ authorization: `Bearer ${token}` })));
    assert.equal(error.code, "unauthorized");
  });
}

Deno.test("no credentials are unauthorized with a hint", async () => {
  const error = await rejection(userOnly(req({})));
  assert.equal(error.code, "unauthorized");
  assert.equal(error.status, 401);
  assert.equal((error.details as { reason: string }).reason, "MISSING_CREDENTIALS");
  assert.ok((error.details as { hint: string }).hint);
});

Deno.test("an expired token is unauthorized", async () => {
  const token = await userToken({}, "-1m");
  const error = await rejection(userOnly(req({ authorization: `Bearer ${token}` })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("a token signed by another key is unauthorized", async () => {
  const other = await jose.generateKeyPair("ES256");
  const token = await userToken({}, "1h", other.privateKey);
  const error = await rejection(userOnly(req({ authorization: `Bearer ${token}` })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("a malformed bearer is unauthorized", async () => {
  const error = await rejection(userOnly(req({ authorization: "Bearer not.a.jwt" })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("the error never repeats the token it refused", async () => {
  const token = await userToken({}, "-1m");
  const error = await rejection(userOnly(req({ authorization: `Bearer ${token}` })));
  assert.doesNotMatch(
    JSON.stringify({ m: error.message, d: error.details }),
    new RegExp(token.slice(-20)),
  );
});

Deno.test("the secret key is not a user on a user-only function", async () => {
  const error = await rejection(userOnly(req({ apikey: SECRET })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("the secret key in apikey is an operator where operators are accepted", async () => {
  const caller = await usersAndOperators(req({ apikey: SECRET }));
  assert.equal(caller.kind, "operator");
});

Deno.test("a user token is still a user where operators are accepted", async () => {
  const caller = await usersAndOperators(
    req({ authorization: `Bearer ${await userToken()}`, apikey: PUBLISHABLE }),
  );
  assert.equal(caller.kind, "user");
});

Deno.test("a wrong secret key is unauthorized", async () => {
  const error = await rejection(usersAndOperators(req({ apikey: "sb_secret_wrong" })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("the legacy service-role key is an operator, in apikey or as bearer", async () => {
  assert.equal((await usersAndOperators(req({ apikey: SERVICE_ROLE }))).kind, "operator");
  assert.equal(
    (await usersAndOperators(req({ authorization: `Bearer ${SERVICE_ROLE}` }))).kind,
    "operator",
  );
});

Deno.test("the legacy service-role key is nobody on a user-only function", async () => {
  const error = await rejection(userOnly(req({ authorization: `Bearer ${SERVICE_ROLE}` })));
  assert.equal(error.code, "unauthorized");
});

Deno.test("signing keys that cannot be fetched are a 503, not the caller's 401", async () => {
  // No inline JWKS: @supabase/server fetches {url}/auth/v1/.well-known/jwks.json, unreachable here.
  const unreachable = supabaseAuth({ operators: false, env: { ...env, jwks: null } });
  const error = await rejection(unreachable(req({ authorization: `Bearer ${await userToken()}` })));
  assert.equal(error.code, "database_unavailable");
  assert.equal(error.status, 503);
});

Deno.test("no secret key configured is the function's misconfiguration, not the caller's", async () => {
  const broken = supabaseAuth({ operators: true, env: { ...env, secretKeys: {} } });
  const error = await rejection(broken(req({ apikey: SECRET })));
  assert.equal(error.code, "server_misconfigured");
  assert.equal(error.status, 500);
});

Deno.test("a refused credential's hint tells the caller what to send, not how to configure the function", async () => {
  const cases: Record<string, string>[] = [
    { apikey: PUBLISHABLE, authorization: "Basic dXNlcjpwYXNz" },
    { apikey: PUBLISHABLE, authorization: `Bearer ${PUBLISHABLE}` },
    { apikey: PUBLISHABLE },
  ];
  for (const headers of cases) {
    const error = await rejection(usersAndOperators(req(headers)));
    assert.equal(error.code, "unauthorized");
    const hint = String((error.details as { hint?: string }).hint);
    assert.doesNotMatch(hint, /`auth`/, `hint addressed to the function's author: ${hint}`);
    assert.match(hint, /Authorization: Bearer/);
  }
});

/**
 * supabase-js numbers every auth client it builds (GoTrueClient.nextInstanceID,
 * per storage key), and every SupabaseClient builds one: the count of clients
 * made so far in this process.
 */
function supabaseClientsBuilt(): number {
  const ids = (AuthClient as unknown as { nextInstanceID?: Record<string, number> })
    .nextInstanceID;
  assert.ok(ids, "supabase-js no longer numbers its auth clients; count clients another way");
  return Object.values(ids).reduce((sum, n) => sum + n, 0);
}

Deno.test("requests reuse the process's database clients instead of building them per request", async () => {
  // Building two supabase-js clients per request was most of a loaded function's memory.
  const auth = supabaseAuth({ operators: true, env });
  const userHeaders = { authorization: `Bearer ${await userToken()}`, apikey: PUBLISHABLE };
  const before = supabaseClientsBuilt();
  await auth(req(userHeaders));
  await auth(req({ apikey: SECRET }));
  const warm = supabaseClientsBuilt();
  assert.ok(warm > before, "the first user and the first operator each build a client");
  for (let i = 0; i < 20; i++) {
    await auth(req(userHeaders));
    await auth(req({ apikey: SECRET }));
  }
  assert.equal(supabaseClientsBuilt() - warm, 0);
});

Deno.test("each user's RPC carries that user's own token through the shared client", async () => {
  // Two sessions' tokens: distinct strings, so a token sent with the wrong call shows.
  const tokens = [await userToken({ session_id: "a" }), await userToken({ session_id: "b" })];
  assert.notEqual(tokens[0], tokens[1]);
  const seen: { authorization: string | null; apikey: string | null; body: string }[] = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const request = new Request(input, init);
    const body = await request.text();
    seen.push({
      authorization: request.headers.get("authorization"),
      apikey: request.headers.get("apikey"),
      body,
    });
    return Response.json({ echoed: body });
  };
  try {
    const callers = await Promise.all(
      tokens.map((token) => userOnly(req({ authorization: `Bearer ${token}` }))),
    );
    await Promise.all(
      callers.flatMap((caller, i) =>
        Array.from({ length: 5 }, () => caller.rpc("whoami", { caller: i }))
      ),
    );
  } finally {
    globalThis.fetch = realFetch;
  }
  assert.equal(seen.length, 10);
  for (const call of seen) {
    const i = JSON.parse(call.body).caller as number;
    assert.equal(call.authorization, `Bearer ${tokens[i]}`);
    assert.equal(call.apikey, PUBLISHABLE);
  }
});
