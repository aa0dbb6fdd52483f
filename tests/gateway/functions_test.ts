/**
 * Edge functions run as the platform runs them: one process per function with
 * only the platform's environment, `verify_jwt` / `entrypoint` from config.toml,
 * requests and responses proxied as streams, and a crash costing one request.
 * Runs against the fixture project in tests/gateway/fixtures.
 */
import assert from "node:assert/strict";
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

const ORIGIN = "http://app.test";
const PLATFORM_ENV = [
  "SUPABASE_URL",
  "SUPABASE_PUBLISHABLE_KEYS",
  "SUPABASE_SECRET_KEYS",
  "SUPABASE_JWKS",
  "SUPABASE_ANON_KEY",
  "SUPABASE_SERVICE_ROLE_KEY",
  "SUPABASE_DB_URL",
  "ALLOWED_ORIGINS",
  "SB_REGION",
  // process plumbing: the module cache and plain output
  "DENO_DIR",
  "NO_COLOR",
  // set by the npm-distributed deno binary itself in every process it starts
  "PATH",
  "DENO_NODE_SHIM_ACTIVE",
];

Deno.test("functions run in their own processes, configured as on the platform", async (t) => {
  const gateway = await startGateway({
    ALLOWED_ORIGINS: ORIGIN,
    GATEWAY_TEST_LEAK: "must not reach functions",
  });
  const { privateJwk } = await loadSigningKeys();
  const token = await mintAccessToken(crypto.randomUUID(), {
    url: gateway.url,
    jwtSecret: JWT_SECRET,
    privateJwk,
  });
  const invoke = (path: string, init: RequestInit = {}) =>
    fetch(`${gateway.url}/functions/v1/${path}`, init);

  try {
    await t.step("verify_jwt = true refuses a request without a token", async () => {
      const response = await invoke("echo", { headers: { origin: ORIGIN } });
      assert.equal(response.status, 401);
      assert.equal(response.headers.get("access-control-allow-origin"), ORIGIN);
      const body = await response.json();
      assert.equal(body.error.code, "unauthorized");
      assert.equal(body.error.details.reason, "missing");
    });

    await t.step("verify_jwt = true refuses API keys, which are not JWTs", async () => {
      for (const key of [PUBLISHABLE_KEY, SECRET_KEY]) {
        const response = await invoke("echo", {
          headers: { apikey: key, authorization: `Bearer ${key}` },
        });
        assert.equal(response.status, 401);
        assert.equal((await response.json()).error.code, "unauthorized");
      }
    });

    await t.step("verify_jwt = true passes user tokens and the legacy keys through", async () => {
      for (const bearer of [token, ANON_KEY, SERVICE_ROLE_KEY]) {
        const response = await invoke("echo", { headers: { authorization: `Bearer ${bearer}` } });
        assert.equal(response.status, 200);
        assert.equal((await response.json()).authorization, `Bearer ${bearer}`);
      }
    });

    await t.step("verify_jwt = false serves anyone, from the configured entrypoint", async () => {
      const response = await invoke("open-echo/a/b?c=1&d=2");
      assert.equal(response.status, 200);
      assert.deepEqual(await response.json(), {
        entrypoint: "handler.ts",
        path: "/open-echo/a/b",
        authorization: null,
      });
    });

    await t.step("the request is proxied: method, path, query, headers and body", async () => {
      const response = await invoke("echo/sub/path?x=1", {
        method: "PUT",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ hello: "world" }),
      });
      const body = await response.json();
      assert.equal(body.method, "PUT");
      assert.equal(body.path, "/echo/sub/path");
      assert.equal(body.search, "?x=1");
      assert.deepEqual(JSON.parse(body.body), { hello: "world" });
    });

    await t.step("a function gets only the platform's environment", async () => {
      const response = await invoke("echo", { headers: { authorization: `Bearer ${token}` } });
      const { env } = await response.json();
      assert.deepEqual(Object.keys(env).sort(), [...PLATFORM_ENV].sort());
      assert.equal(env.SUPABASE_URL, gateway.url);
      assert.deepEqual(JSON.parse(env.SUPABASE_PUBLISHABLE_KEYS), { default: PUBLISHABLE_KEY });
      assert.deepEqual(JSON.parse(env.SUPABASE_SECRET_KEYS), { default: SECRET_KEY });
      assert.equal(env.SUPABASE_ANON_KEY, ANON_KEY);
      assert.equal(env.SUPABASE_SERVICE_ROLE_KEY, SERVICE_ROLE_KEY);
      assert.equal(env.SUPABASE_DB_URL, gateway.dbUrl);
      assert.equal(env.ALLOWED_ORIGINS, ORIGIN);
      assert.equal(JSON.parse(env.SUPABASE_JWKS).keys[0].kid, privateJwk.kid);
    });

    await t.step("_shared, unknown and disabled functions answer 404 with CORS", async () => {
      for (const name of ["_shared", "nope", "disabled"]) {
        const response = await invoke(name, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(response.status, 404);
        assert.equal(response.headers.get("access-control-allow-origin"), ORIGIN);
        assert.equal((await response.json()).error.code, "not_found");
      }
    });

    await t.step("a crashed function answers 500 and is restarted", async () => {
      const before = await (await invoke("crashy")).json();
      const crashed = await invoke("crashy?crash", { headers: { origin: ORIGIN } });
      assert.equal(crashed.status, 500);
      assert.equal(crashed.headers.get("access-control-allow-origin"), ORIGIN);
      assert.equal((await crashed.json()).error.code, "function_crashed");
      const after = await invoke("crashy");
      assert.equal(after.status, 200);
      assert.notEqual((await after.json()).pid, before.pid);
      const other = await invoke("open-echo");
      assert.equal(other.status, 200);
      await other.body?.cancel();
    });

    await t.step(
      "a function that fails to boot answers 503; the gateway keeps serving",
      async () => {
        const response = await invoke("broken");
        assert.equal(response.status, 503);
        assert.equal((await response.json()).error.code, "boot_error");
        const other = await invoke("open-echo");
        assert.equal(other.status, 200);
        await other.body?.cancel();
      },
    );

    await t.step("responses stream, and a client abort reaches the function", async () => {
      const controller = new AbortController();
      const response = await invoke("stream", { signal: controller.signal });
      const reader = response.body!.getReader();
      const first = await reader.read();
      assert.equal(new TextDecoder().decode(first.value), "tick\n");
      controller.abort();
      await reader.cancel().catch(() => {});
      let cancelled = 0;
      for (let i = 0; i < 40 && cancelled === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        cancelled = (await (await invoke("stream?stats")).json()).cancelled;
      }
      assert.equal(cancelled, 1);
    });

    await t.step("each request is one log line, without tokens", async () => {
      const lines = (await Deno.readTextFile(gateway.requestLog)).trim().split("\n");
      assert.ok(lines.length >= 10);
      assert.ok(lines.some((line) => / GET \/functions\/v1\/echo 401 \d+\.\dms$/.test(line)));
      assert.ok(lines.some((line) => / GET \/functions\/v1\/crashy 500 /.test(line)));
      const log = lines.join("\n");
      for (const secret of [token, PUBLISHABLE_KEY, SECRET_KEY, "c=1"]) {
        assert.ok(!log.includes(secret), "the request log must not contain keys or queries");
      }
    });
  } finally {
    await gateway.stop();
  }
});

Deno.test("editing a function's code takes effect without restarting the gateway", async () => {
  const project = await Deno.makeTempDir({ prefix: "gateway-reload-" });
  const source = (version: string) =>
    `export default { fetch: () => Response.json({ version: "${version}", pid: Deno.pid }) };\n`;
  await Deno.mkdir(`${project}/functions/reload`, { recursive: true });
  await Deno.writeTextFile(`${project}/config.toml`, "[functions.reload]\nverify_jwt = false\n");
  await Deno.writeTextFile(`${project}/functions/reload/index.ts`, source("v1"));
  const gateway = await startGateway({ FUNCTIONS_DIR: `${project}/functions` });
  const version = async () =>
    (await (await fetch(`${gateway.url}/functions/v1/reload`)).json()).version;
  try {
    assert.equal(await version(), "v1");
    await Deno.writeTextFile(`${project}/functions/reload/index.ts`, source("v2"));
    let seen = "v1";
    for (let i = 0; i < 50 && seen !== "v2"; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      seen = await version();
    }
    assert.equal(seen, "v2");
  } finally {
    await gateway.stop();
    await Deno.remove(project, { recursive: true });
  }
});
