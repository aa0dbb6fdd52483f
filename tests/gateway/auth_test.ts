/**
 * Bad credentials are refused with 401 before anything runs — as PostgREST's
 * JSON error on /rest/v1, as the contract's error on /functions/v1 — and every
 * refusal, like every preflight, carries CORS headers.
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import {
  ANON_KEY,
  JWT_SECRET,
  loadSigningKeys,
  PROJECT_KEYS,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "../../local/gateway/keys.ts";
import { mintAccessToken } from "../../local/gateway/jwt.ts";
import { startGateway } from "./instance.ts";

function base64url(value: unknown): string {
  return btoa(JSON.stringify(value)).replaceAll("=", "").replaceAll("+", "-").replaceAll("/", "_");
}

Deno.test("bad credentials get 401 with CORS headers", async (t) => {
  const gateway = await startGateway();
  const { privateJwk } = await loadSigningKeys();
  const userId = crypto.randomUUID();
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: userId, role: "service_role", aud: "authenticated", exp: now + 600 };

  const otherKey = await jose.generateKeyPair("ES256");
  const badTokens: [string, string, string][] = [
    [
      "an expired token",
      await mintAccessToken(userId, { url: gateway.url, jwtSecret: JWT_SECRET, privateJwk }, {
        expiresIn: -120,
      }),
      "JWT expired",
    ],
    [
      "an HS256 token signed with another secret",
      await new jose.SignJWT(claims).setProtectedHeader({ alg: "HS256" })
        .sign(new TextEncoder().encode("not-the-project-secret-not-the-project-secret")),
      "JWT cryptographic operation failed",
    ],
    [
      "an ES256 token signed by another key under the project's kid",
      await new jose.SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: privateJwk.kid })
        .sign(otherKey.privateKey),
      "JWT cryptographic operation failed",
    ],
    [
      "an ES256 token with an unknown kid",
      await new jose.SignJWT(claims).setProtectedHeader({ alg: "ES256", kid: "unknown" })
        .sign(otherKey.privateKey),
      "No suitable key or wrong key type",
    ],
    [
      "an unsigned alg:none token",
      `${base64url({ alg: "none", typ: "JWT" })}.${base64url(claims)}.`,
      "Wrong or unsupported encoding algorithm",
    ],
    [
      "an RS256-labelled token",
      `${base64url({ alg: "RS256", typ: "JWT" })}.${base64url(claims)}.c2ln`,
      "Wrong or unsupported encoding algorithm",
    ],
    ["a malformed token", "not-a-jwt", "Expected 3 parts in JWT; got 1"],
  ];

  const assertCors = (response: Response) => {
    assert.equal(response.headers.get("access-control-allow-origin"), "*");
    assert.match(response.headers.get("access-control-allow-headers") ?? "", /apikey/);
  };

  try {
    for (const [what, token, message] of badTokens) {
      await t.step(`/rest/v1 refuses ${what} with PostgREST's 401`, async () => {
        const response = await fetch(`${gateway.url}/rest/v1/rpc/anything`, {
          method: "POST",
          headers: { apikey: PUBLISHABLE_KEY, authorization: `Bearer ${token}` },
          body: "{}",
        });
        assert.equal(response.status, 401);
        assertCors(response);
        assert.match(response.headers.get("www-authenticate") ?? "", /invalid_token/);
        const body = await response.json();
        assert.equal(body.code, message === "JWT expired" ? "PGRST303" : "PGRST301");
        assert.equal(body.message, message);
        assert.equal(typeof body.hint, "string");
      });

      await t.step(`/functions/v1 refuses ${what} when verify_jwt is on`, async () => {
        const response = await fetch(`${gateway.url}/functions/v1/echo`, {
          headers: { authorization: `Bearer ${token}` },
        });
        assert.equal(response.status, 401);
        assertCors(response);
        // The platform's verify_jwt body names the kind of token, not why it failed.
        let alg: string | undefined;
        try {
          alg = jose.decodeProtectedHeader(token).alg;
        } catch { /* not a JWT at all */ }
        const code = alg === "HS256"
          ? "UNAUTHORIZED_LEGACY_JWT"
          : alg === "ES256" || alg === "RS256"
          ? "UNAUTHORIZED_ASYMMETRIC_JWT"
          : alg === undefined
          ? "UNAUTHORIZED_INVALID_JWT_FORMAT"
          : "UNAUTHORIZED_UNSUPPORTED_TOKEN_ALGORITHM";
        assert.equal(response.headers.get("sb-error-code"), code);
        const body = await response.json();
        assert.equal(body.code, code);
        assert.equal(body.msg, body.message);
      });
    }

    await t.step("/rest/v1 without any key answers 401 and names the missing apikey", async () => {
      const response = await fetch(`${gateway.url}/rest/v1/rpc/anything`, {
        method: "POST",
        body: "{}",
      });
      assert.equal(response.status, 401);
      assertCors(response);
      assert.equal((await response.json()).message, "No API key found in request");
    });

    await t.step("/rest/v1 with an unknown sb_ key answers 401 Invalid API key", async () => {
      const response = await fetch(`${gateway.url}/rest/v1/rpc/anything`, {
        method: "POST",
        headers: { apikey: "sb_publishable_not_this_project" },
        body: "{}",
      });
      assert.equal(response.status, 401);
      assertCors(response);
      assert.equal((await response.json()).message, "Invalid API key");
    });

    await t.step("preflights answer 204 with CORS headers, without credentials", async () => {
      for (const path of ["/rest/v1/rpc/anything", "/auth/v1/.well-known/jwks.json"]) {
        const response = await fetch(`${gateway.url}${path}`, {
          method: "OPTIONS",
          headers: {
            origin: "http://app.test",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, apikey, content-type, x-client-info",
          },
        });
        await response.body?.cancel();
        assert.equal(response.status, 204);
        assert.equal(response.headers.get("access-control-allow-origin"), "*");
        assert.match(response.headers.get("access-control-allow-methods") ?? "", /POST/);
        assert.match(response.headers.get("access-control-allow-headers") ?? "", /x-client-info/);
      }
    });

    await t.step("unknown routes answer a JSON 404 with CORS headers", async () => {
      const response = await fetch(`${gateway.url}/storage/v1/object`);
      assert.equal(response.status, 404);
      assertCors(response);
      assert.equal((await response.json()).error.code, "not_found");
    });
  } finally {
    await gateway.stop();
  }
});

// --- Every kind of project (PROJECT_KEYS, local/gateway/keys.ts) -----------------------------

/** Which API keys, token algorithms and function env each kind has: the acceptance table. */
const ACCEPTS = {
  legacy: { sbKeys: false, legacyKeys: true, es256: false },
  signing: { sbKeys: true, legacyKeys: false, es256: true },
  both: { sbKeys: true, legacyKeys: true, es256: true },
} as const;

for (const kind of PROJECT_KEYS) {
  Deno.test(`PROJECT_KEYS=${kind}: the gateway and the functions' env are those of such a project`, async (t) => {
    const gateway = await startGateway({ PROJECT_KEYS: kind });
    const accepts = ACCEPTS[kind];
    const userId = crypto.randomUUID();
    const signing = gateway.signing;
    const clientKey = accepts.sbKeys ? PUBLISHABLE_KEY : ANON_KEY;
    /** 401 = the credentials were refused; anything else (404 here) = accepted. */
    const rpc = async (headers: Record<string, string>) => {
      const response = await fetch(`${gateway.url}/rest/v1/rpc/gw_no_such_function`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: "{}",
      });
      const body = await response.json();
      if (response.status === 401) {
        assert.equal(response.headers.get("access-control-allow-origin"), "*");
      }
      return { status: response.status, message: body.message as string };
    };

    try {
      await t.step("API keys", async () => {
        const keys: [string, string, boolean, string][] = [
          ["the publishable key", PUBLISHABLE_KEY, accepts.sbKeys, "Invalid API key"],
          ["the secret key", SECRET_KEY, accepts.sbKeys, "Invalid API key"],
          ["the anon key", ANON_KEY, accepts.legacyKeys, "Legacy API keys are disabled"],
          [
            "the service_role key",
            SERVICE_ROLE_KEY,
            accepts.legacyKeys,
            "Legacy API keys are disabled",
          ],
        ];
        for (const [what, key, accepted, refusal] of keys) {
          for (
            const headers of [
              { apikey: key },
              { apikey: key, authorization: `Bearer ${key}` },
            ] as Record<string, string>[]
          ) {
            const { status, message } = await rpc(headers);
            if (accepted) assert.notEqual(status, 401, `${what} refused: ${message}`);
            else assert.deepEqual({ status, message }, { status: 401, message: refusal }, what);
          }
        }
      });

      await t.step(
        "user tokens: HS256 always (the legacy secret), ES256 where signing keys are on",
        async () => {
          const hs256 = await mintAccessToken(userId, signing, { alg: "HS256" });
          assert.notEqual(
            (await rpc({ apikey: clientKey, authorization: `Bearer ${hs256}` })).status,
            401,
          );
          const es256 = await mintAccessToken(userId, signing, { alg: "ES256" });
          const es = await rpc({ apikey: clientKey, authorization: `Bearer ${es256}` });
          if (accepts.es256) assert.notEqual(es.status, 401, es.message);
          else assert.deepEqual(es, { status: 401, message: "No suitable key or wrong key type" });
          const forged = await new jose.SignJWT({ sub: userId, role: "authenticated" })
            .setProtectedHeader({ alg: "HS256" })
            .setExpirationTime("1h")
            .sign(new TextEncoder().encode("not-the-project-secret-not-the-project-secret"));
          assert.equal(
            (await rpc({ apikey: clientKey, authorization: `Bearer ${forged}` })).status,
            401,
          );
        },
      );

      await t.step(
        "the JWKS publishes the signing key, and nothing on a legacy project",
        async () => {
          const jwks = await (await fetch(`${gateway.url}/auth/v1/.well-known/jwks.json`)).json();
          assert.deepEqual(
            jwks.keys.map((key: { kid: string }) => key.kid),
            accepts.es256 ? [signing.privateJwk.kid] : [],
          );
          assert.ok(
            jwks.keys.every((key: { d?: string }) => key.d === undefined),
            "a private key leaked",
          );
        },
      );

      await t.step(
        "functions get the environment a hosted function of this kind gets",
        async () => {
          // echo has verify_jwt on: an HS256 token passes it on every kind.
          const token = await mintAccessToken(userId, signing, { alg: "HS256" });
          const response = await fetch(`${gateway.url}/functions/v1/echo`, {
            headers: { authorization: `Bearer ${token}` },
          });
          const { env } = await response.json();
          assert.equal(env.SUPABASE_URL, gateway.url);
          assert.equal(env.SUPABASE_ANON_KEY, ANON_KEY);
          assert.equal(env.SUPABASE_SERVICE_ROLE_KEY, SERVICE_ROLE_KEY);
          assert.ok(env.SUPABASE_DB_URL);
          assert.equal(
            env.SUPABASE_PUBLISHABLE_KEYS,
            accepts.sbKeys ? JSON.stringify({ default: PUBLISHABLE_KEY }) : undefined,
          );
          assert.equal(
            env.SUPABASE_SECRET_KEYS,
            accepts.sbKeys ? JSON.stringify({ default: SECRET_KEY }) : undefined,
          );
          assert.equal(JSON.parse(env.SUPABASE_JWKS).keys.length, accepts.es256 ? 1 : 0);
          assert.equal(env.SUPABASE_JWT_SECRET, undefined, "no platform injects the JWT secret");
        },
      );
    } finally {
      await gateway.stop();
    }
  });
}

Deno.test("an unknown PROJECT_KEYS stops the gateway with a clear error", async () => {
  await assert.rejects(startGateway({ PROJECT_KEYS: "new" }), /PROJECT_KEYS=new is not one of/);
});

// The real functions behind a gateway of each kind. A random device id makes
// the outcome tell who decided: 404 not_found is the SQL answering a caller
// it accepted; 401 is a refusal, by the function or by the database.
const REAL_FUNCTIONS = new URL("../../supabase/functions", import.meta.url).pathname;

for (const kind of PROJECT_KEYS) {
  Deno.test(`PROJECT_KEYS=${kind}: both functions accept this project's callers and refuse the rest with the contract's 401`, async (t) => {
    const gateway = await startGateway({ PROJECT_KEYS: kind, FUNCTIONS_DIR: REAL_FUNCTIONS });
    const accepts = ACCEPTS[kind];
    const signing = gateway.signing;
    const userId = crypto.randomUUID();
    const clientKey = accepts.sbKeys ? PUBLISHABLE_KEY : ANON_KEY;
    const call = async (name: string, headers: Record<string, string>, body: unknown) => {
      const response = await fetch(`${gateway.url}/functions/v1/${name}`, {
        method: "POST",
        headers: { "content-type": "application/json", origin: "http://app.test", ...headers },
        body: JSON.stringify(body),
      });
      const text = await response.text();
      assert.equal(response.headers.get("access-control-allow-origin"), "*", text);
      const parsed = JSON.parse(text);
      if (response.status >= 400) {
        assert.deepEqual(Object.keys(parsed.error).sort(), ["code", "details", "message"], text);
      }
      return { status: response.status, code: parsed.error?.code as string | undefined, text };
    };
    const user = (token: string) => ({ apikey: clientKey, authorization: `Bearer ${token}` });
    const device = { device_id: crypto.randomUUID() };
    const fns = ["get-device-qr", "reassign-device"];

    try {
      await t.step("an HS256 user token (the legacy secret's) is the user", async () => {
        const token = await mintAccessToken(userId, signing, { alg: "HS256" });
        for (const name of fns) {
          const { status, code, text } = await call(name, user(token), device);
          assert.deepEqual({ status, code }, { status: 404, code: "not_found" }, text);
        }
      });

      await t.step(`an ES256 user token is ${accepts.es256 ? "the user" : "refused"}`, async () => {
        const token = await mintAccessToken(userId, signing, { alg: "ES256" });
        for (const name of fns) {
          const { status, text } = await call(name, user(token), device);
          assert.equal(status, accepts.es256 ? 404 : 401, text);
        }
      });

      await t.step(
        "forged, expired, alg:none, malformed and user-less tokens are 401",
        async () => {
          const forged = await new jose.SignJWT({ sub: userId, role: "authenticated" })
            .setProtectedHeader({ alg: "HS256", typ: "JWT" })
            .setExpirationTime("1h")
            .sign(new TextEncoder().encode("not-the-project-secret-not-the-project-secret"));
          const expired = await mintAccessToken(userId, signing, { alg: "HS256", expiresIn: -120 });
          const none = `${base64url({ alg: "none", typ: "JWT" })}.${
            base64url({ sub: userId, role: "authenticated" })
          }.`;
          const unknownKid = await new jose.SignJWT({ sub: userId, role: "authenticated" })
            .setProtectedHeader({ alg: "ES256", kid: "unknown" })
            .setExpirationTime("1h")
            .sign((await jose.generateKeyPair("ES256")).privateKey);
          // Validly signed with the legacy secret, but naming no Supabase Auth user.
          const notAUser = await mintAccessToken("user_2abc", signing, { alg: "HS256" });
          for (const token of [forged, expired, none, unknownKid, "not-a-jwt", notAUser]) {
            for (const name of fns) {
              const { status, code, text } = await call(name, user(token), device);
              assert.deepEqual({ status, code }, { status: 401, code: "unauthorized" }, text);
            }
          }
        },
      );

      await t.step(
        "operators: the secret key where it exists, the service_role key while enabled",
        async () => {
          const health = { scope: "health" };
          const secret = await call("reassign-device", { apikey: SECRET_KEY }, health);
          assert.equal(secret.status, accepts.sbKeys ? 200 : 401, secret.text);
          const serviceRole = await call("reassign-device", {
            apikey: SERVICE_ROLE_KEY,
            authorization: `Bearer ${SERVICE_ROLE_KEY}`,
          }, health);
          assert.equal(serviceRole.status, accepts.legacyKeys ? 200 : 401, serviceRole.text);
        },
      );

      await t.step("API keys are nobody's user token", async () => {
        for (const key of [ANON_KEY, SERVICE_ROLE_KEY, PUBLISHABLE_KEY]) {
          const { status, text } = await call("get-device-qr", user(key), device);
          assert.equal(status, 401, text);
        }
      });
    } finally {
      await gateway.stop();
    }
  });
}
