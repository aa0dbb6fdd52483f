/**
 * The real @supabase/server verification, in-process: a signing key made here,
 * its JWKS handed to `supabaseAuth` as the platform would, tokens minted here.
 * The database calls are then checked by what the returned Rpc sends.
 */
import assert from "node:assert/strict";
import { AuthClient } from "@supabase/supabase-js";
import * as jose from "jose";
import type { SupabaseEnv } from "@supabase/server";
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

const userOnly = supabaseAuth({ operators: false, env, serviceRoleKey: SERVICE_ROLE });
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

Deno.test("no SUPABASE_URL is the function's misconfiguration, not the caller's", async () => {
  const saved = Deno.env.get("SUPABASE_URL");
  Deno.env.delete("SUPABASE_URL");
  try {
    const broken = supabaseAuth({ operators: true, env: { ...env, url: undefined } });
    const error = await rejection(broken(req({ apikey: SECRET })));
    assert.equal(error.code, "server_misconfigured");
    assert.equal(error.status, 500);
  } finally {
    if (saved !== undefined) Deno.env.set("SUPABASE_URL", saved);
  }
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

// --- Every kind of project -------------------------------------------------------------------
//
// A legacy project signs user tokens with its JWT secret (HS256, no `kid`),
// which no function holds: those tokens go to PostgREST unread. Here a fake
// PostgREST verifies them as the real one does (HS256 with the project's
// secret, 401 PGRST301 / PGRST303 otherwise) and records what reached it.

const JWT_SECRET = "legacy-jwt-secret-of-this-test-project-0123456789";
const ANON = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.legacy-anon-signature";

interface Forwarded {
  apikey: string | null;
  authorization: string | null;
}

/** A PostgREST stand-in on a free port below 32768: verifies HS256 bearers like PostgREST. */
function fakePostgrest(): {
  url: string;
  seen: Forwarded[];
  [Symbol.asyncDispose](): Promise<void>;
} {
  const seen: Forwarded[] = [];
  const handler = async (request: Request) => {
    const authorization = request.headers.get("authorization");
    seen.push({ apikey: request.headers.get("apikey"), authorization });
    const token = authorization?.replace(/^Bearer /, "") ?? "";
    try {
      const { payload } = await jose.jwtVerify(token, new TextEncoder().encode(JWT_SECRET), {
        algorithms: ["HS256"],
      });
      if (!/^[0-9a-f-]{36}$/i.test(String(payload.sub))) {
        // What `auth.uid()` does with a sub that is no UUID.
        return Response.json({
          code: "22P02",
          message: `invalid input syntax for type uuid: "${payload.sub}"`,
          details: null,
          hint: null,
        }, { status: 400 });
      }
      return Response.json({ role: payload.role, sub: payload.sub });
    } catch (error) {
      const expired = error instanceof jose.errors.JWTExpired;
      return Response.json(
        {
          code: expired ? "PGRST303" : "PGRST301",
          message: expired ? "JWT expired" : "JWT cryptographic operation failed",
          details: null,
          hint: null,
        },
        { status: 401 },
      );
    }
  };
  for (let attempt = 0;; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    try {
      const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, handler);
      return {
        url: `http://127.0.0.1:${port}`,
        seen,
        [Symbol.asyncDispose]: () => server.shutdown(),
      };
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse) || attempt > 20) throw error;
    }
  }
}

async function legacyToken(
  { secret = JWT_SECRET, expiresIn = "1h", sub = USER_ID }: {
    secret?: string;
    expiresIn?: string;
    sub?: string;
  } = {},
) {
  return await new jose.SignJWT({ role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** What the platform injects for each kind (local/gateway/keys.ts describes the kinds). */
function projectEnv(kind: "legacy" | "signing" | "both", url: string): Partial<SupabaseEnv> {
  const none: Record<string, string> = {};
  return {
    url,
    publishableKeys: kind === "legacy" ? none : { default: PUBLISHABLE },
    secretKeys: kind === "legacy" ? none : { default: SECRET },
    // A legacy project's JWKS is empty: the shared secret is never published.
    jwks: kind === "legacy" ? { keys: [] } : jwks,
  };
}

function authFor(kind: "legacy" | "signing" | "both", url: string, operators: boolean) {
  return supabaseAuth({
    operators,
    env: projectEnv(kind, url),
    anonKey: ANON,
    serviceRoleKey: SERVICE_ROLE,
  });
}

Deno.test("legacy project: a valid HS256 user token reaches the database unread, which accepts it", async () => {
  await using postgrest = fakePostgrest();
  const token = await legacyToken();
  for (const operators of [false, true]) {
    const caller = await authFor("legacy", postgrest.url, operators)(
      req({ authorization: `Bearer ${token}`, apikey: ANON }),
    );
    assert.equal(caller.kind, "user");
    // Verified by the database, not here: no claim of it is trusted.
    assert.equal(caller.kind === "user" && caller.userId, null);
    assert.deepEqual(await caller.rpc("get_device_qr", {}), {
      role: "authenticated",
      sub: USER_ID,
    });
  }
  // Sent as it came, with the project's anon key as the API key.
  assert.deepEqual(postgrest.seen, [
    { apikey: ANON, authorization: `Bearer ${token}` },
    { apikey: ANON, authorization: `Bearer ${token}` },
  ]);
});

Deno.test("both kinds of key: an HS256 token goes to the database with the publishable key", async () => {
  await using postgrest = fakePostgrest();
  const token = await legacyToken();
  const caller = await authFor("both", postgrest.url, false)(
    req({ authorization: `Bearer ${token}`, apikey: PUBLISHABLE }),
  );
  await caller.rpc("get_device_qr", {});
  assert.deepEqual(postgrest.seen, [{ apikey: PUBLISHABLE, authorization: `Bearer ${token}` }]);
});

for (const kind of ["legacy", "both", "signing"] as const) {
  Deno.test(`${kind} project: a forged or expired HS256 token is refused by the database with 401`, async () => {
    await using postgrest = fakePostgrest();
    for (
      const token of [
        await legacyToken({ secret: "not-the-secret-of-this-project-0123456789abcdef" }),
        await legacyToken({ expiresIn: "-2m" }),
      ]
    ) {
      const caller = await authFor(kind, postgrest.url, true)(
        req({ authorization: `Bearer ${token}` }),
      );
      const error = await rejection(caller.rpc("get_device_qr", {}));
      assert.equal(error.code, "unauthorized");
      assert.equal(error.status, 401);
    }
    assert.equal(postgrest.seen.length, 2);
  });

  Deno.test(`${kind} project: alg none, an unknown kid and a malformed token are refused here`, async () => {
    await using postgrest = fakePostgrest();
    const none = [
      btoa(JSON.stringify({ alg: "none", typ: "JWT" })),
      btoa(JSON.stringify({ sub: USER_ID, role: "authenticated" })),
      "",
    ].join(".").replaceAll("=", "");
    const other = await jose.generateKeyPair("ES256");
    const unknownKid = await new jose.SignJWT({ role: "authenticated", aud: "authenticated" })
      .setProtectedHeader({ alg: "ES256", kid: "not-a-key-of-this-project" })
      .setSubject(USER_ID)
      .setExpirationTime("1h")
      .sign(other.privateKey);
    for (const token of [none, unknownKid, "not-a-jwt", "e30.e30"]) {
      const error = await rejection(
        authFor(kind, postgrest.url, true)(req({ authorization: `Bearer ${token}` })),
      );
      assert.equal(error.code, "unauthorized", token);
    }
    assert.equal(postgrest.seen.length, 0, "nothing refusable here reaches the database");
  });

  Deno.test(`${kind} project: the anon key as bearer is nobody, and never reaches the database`, async () => {
    await using postgrest = fakePostgrest();
    for (const operators of [false, true]) {
      const error = await rejection(
        authFor(kind, postgrest.url, operators)(req({ authorization: `Bearer ${ANON}` })),
      );
      assert.equal(error.code, "unauthorized");
      assert.equal((error.details as { reason: string }).reason, "API_KEY_NOT_A_USER_TOKEN");
    }
    assert.equal(postgrest.seen.length, 0);
  });
}

Deno.test("legacy project: sb_ keys identify nobody (401, not a 500)", async () => {
  for (const headers of [{ apikey: SECRET }, { apikey: PUBLISHABLE }, { apikey: "sb_secret_x" }]) {
    for (const operators of [false, true]) {
      const error = await rejection(
        authFor("legacy", "http://127.0.0.1:9", operators)(req(headers)),
      );
      assert.equal(error.code, "unauthorized", JSON.stringify(headers));
      assert.equal(error.status, 401);
    }
  }
});

Deno.test("legacy project: an ES256 token is refused, since the JWKS holds no key", async () => {
  const error = await rejection(
    authFor("legacy", "http://127.0.0.1:9", false)(
      req({ authorization: `Bearer ${await userToken()}` }),
    ),
  );
  assert.equal(error.code, "unauthorized");
});

Deno.test("legacy project: the service_role key is an operator, and its RPC carries that key", async () => {
  await using postgrest = fakePostgrest();
  const caller = await authFor("legacy", postgrest.url, true)(req({ apikey: SERVICE_ROLE }));
  assert.equal(caller.kind, "operator");
  await rejection(caller.rpc("assignment_health", {}));
  assert.deepEqual(postgrest.seen, [{
    apikey: SERVICE_ROLE,
    authorization: `Bearer ${SERVICE_ROLE}`,
  }]);
});

Deno.test("signing project: the secret key is an operator, even beside a stale HS256 token", async () => {
  const auth = authFor("signing", "http://127.0.0.1:9", true);
  assert.equal((await auth(req({ apikey: SECRET }))).kind, "operator");
  const stale = await legacyToken({ expiresIn: "-2m" });
  assert.equal(
    (await auth(req({ apikey: SECRET, authorization: `Bearer ${stale}` }))).kind,
    "operator",
  );
});

Deno.test("signing and both: an ES256 token is verified here and names its user", async () => {
  for (const kind of ["signing", "both"] as const) {
    const caller = await authFor(kind, "http://127.0.0.1:9", true)(
      req({ authorization: `Bearer ${await userToken()}`, apikey: PUBLISHABLE }),
    );
    assert.equal(caller.kind === "user" && caller.userId, USER_ID);
  }
});

Deno.test("legacy project: a validly signed HS256 token whose sub is no user is 401, not a 500", async () => {
  await using postgrest = fakePostgrest();
  for (const sub of ["user_2abc", ""]) {
    const caller = await authFor("legacy", postgrest.url, false)(
      req({ authorization: `Bearer ${await legacyToken({ sub })}`, apikey: ANON }),
    );
    const error = await rejection(caller.rpc("get_device_qr", {}));
    assert.equal(error.code, "unauthorized");
    assert.equal((error.details as { reason: string }).reason, "SUBJECT_NOT_A_USER_ID");
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
