/**
 * Bad credentials are refused with 401 before anything runs — as PostgREST's
 * JSON error on /rest/v1, as the contract's error on /functions/v1 — and every
 * refusal, like every preflight, carries CORS headers.
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import { JWT_SECRET, loadSigningKeys, PUBLISHABLE_KEY } from "../../local/gateway/keys.ts";
import { mintAccessToken } from "../../local/gateway/jwt.ts";
import { startGateway } from "./instance.ts";

function base64url(value: unknown): string {
  return btoa(JSON.stringify(value)).replaceAll("=", "").replaceAll("+", "-").replaceAll("/", "_");
}

Deno.test("bad credentials get 401 with CORS headers", async (t) => {
  const gateway = await startGateway();
  const { privateJwk } = await loadSigningKeys(gateway.stateDir);
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
