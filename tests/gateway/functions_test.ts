/**
 * Edge functions run as the platform runs them: one process per function on
 * the edge runtime's Deno with only the platform's environment (plus process
 * plumbing), `verify_jwt` / `entrypoint` from config.toml, requests and
 * responses proxied as streams, the platform's memory and wall-clock limits,
 * the platform's own error bodies, and a crash costing one request.
 * Runs against the fixture project in tests/gateway/fixtures.
 */
import assert from "node:assert/strict";
import {
  ANON_KEY,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
} from "../../local/gateway/keys.ts";
import { PROCESS_PLUMBING } from "../../local/gateway/functions.ts";
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
];
/** What the gateway is given below beside configuration; only this plumbing may pass. */
const CA_FILE = Deno.env.get("NODE_EXTRA_CA_CERTS") ?? "/etc/ssl/certs/ca-certificates.crt";
const PLUMBING = {
  NODE_EXTRA_CA_CERTS: CA_FILE,
  SSL_CERT_DIR: "/etc/ssl/certs",
  no_proxy: "127.0.0.1,localhost",
};
/** Plumbing the function process gets even when the gateway has none of it. */
const ALWAYS = ["DENO_DIR", "NO_COLOR", "DENO_CERT"];
const BOOT_ERROR = { code: "BOOT_ERROR", message: "Worker failed to boot (please check logs)" };
/** The Deno that supabase/edge-runtime embeds. */
const EDGE_RUNTIME_DENO_VERSION = "2.1.4";

Deno.test("functions run in their own processes, configured as on the platform", async (t) => {
  const gateway = await startGateway({
    ALLOWED_ORIGINS: ORIGIN,
    GATEWAY_TEST_LEAK: "must not reach functions",
    ...PLUMBING,
  });
  const token = await mintAccessToken(crypto.randomUUID(), gateway.signing);
  const invoke = (path: string, init: RequestInit = {}) =>
    fetch(`${gateway.url}/functions/v1/${path}`, init);

  try {
    await t.step(
      "verify_jwt = true refuses a request without a token, as the platform words it",
      async () => {
        const response = await invoke("echo", { headers: { origin: ORIGIN } });
        assert.equal(response.status, 401);
        assert.equal(response.headers.get("access-control-allow-origin"), ORIGIN);
        assert.equal(response.headers.get("sb-error-code"), "UNAUTHORIZED_NO_AUTH_HEADER");
        assert.deepEqual(await response.json(), {
          code: "UNAUTHORIZED_NO_AUTH_HEADER",
          message: "Missing authorization header",
          msg: "Missing authorization header",
        });
      },
    );

    await t.step("verify_jwt = true refuses API keys, which are not JWTs", async () => {
      for (const key of [PUBLISHABLE_KEY, SECRET_KEY]) {
        const response = await invoke("echo", {
          headers: { apikey: key, authorization: `Bearer ${key}` },
        });
        assert.equal(response.status, 401);
        assert.deepEqual(await response.json(), {
          code: "UNAUTHORIZED_INVALID_JWT_FORMAT",
          message: "Invalid JWT format",
          msg: "Invalid JWT format",
        });
      }
    });

    await t.step("verify_jwt = true refuses a forged token by its algorithm", async () => {
      const [header, payload] = token.split(".");
      const response = await invoke("echo", {
        headers: { authorization: `Bearer ${header}.${payload}.AAAA` },
      });
      assert.equal(response.status, 401);
      const body = await response.json();
      assert.match(body.code, /^UNAUTHORIZED_(ASYMMETRIC|LEGACY)_JWT$/);
      assert.equal(body.message, "Invalid JWT");
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

    await t.step("a function runs on the edge runtime's Deno, not the tooling's", async () => {
      const response = await invoke("echo", { headers: { authorization: `Bearer ${token}` } });
      assert.equal((await response.json()).deno, EDGE_RUNTIME_DENO_VERSION);
      assert.notEqual(Deno.version.deno, EDGE_RUNTIME_DENO_VERSION);
    });

    await t.step(
      "a function gets the platform's environment and process plumbing only",
      async () => {
        const response = await invoke("echo", { headers: { authorization: `Bearer ${token}` } });
        const { env } = await response.json();
        // The npm-distributed deno binary adds these to every process it starts.
        const runtime = ["PATH", "DENO_NODE_SHIM_ACTIVE"].filter((name) => name in env);
        // The gateway also inherits this test's own plumbing (e.g. SSL_CERT_FILE).
        const inherited = PROCESS_PLUMBING.filter((name) => Deno.env.get(name) !== undefined);
        const expected = new Set([
          ...PLATFORM_ENV,
          ...Object.keys(PLUMBING),
          ...ALWAYS,
          ...inherited,
          ...runtime,
        ]);
        assert.deepEqual(Object.keys(env).sort(), [...expected].sort());
        assert.ok(!("GATEWAY_TEST_LEAK" in env) && !("HOME" in env), "configuration leaked");
        for (const [name, value] of Object.entries(PLUMBING)) assert.equal(env[name], value);
        assert.equal(
          env.DENO_CERT,
          CA_FILE,
          "Deno 2.1.4 trusts an extra CA for fetch via DENO_CERT",
        );
        assert.equal(env.SUPABASE_URL, gateway.url);
        assert.deepEqual(JSON.parse(env.SUPABASE_PUBLISHABLE_KEYS), { default: PUBLISHABLE_KEY });
        assert.deepEqual(JSON.parse(env.SUPABASE_SECRET_KEYS), { default: SECRET_KEY });
        assert.equal(env.SUPABASE_ANON_KEY, ANON_KEY);
        assert.equal(env.SUPABASE_SERVICE_ROLE_KEY, SERVICE_ROLE_KEY);
        assert.equal(env.SUPABASE_DB_URL, gateway.dbUrl);
        assert.equal(env.ALLOWED_ORIGINS, ORIGIN);
        assert.equal(JSON.parse(env.SUPABASE_JWKS).keys[0].kid, gateway.signing.privateJwk.kid);
      },
    );

    await t.step("_shared, unknown and disabled functions answer 404 with CORS", async () => {
      for (const name of ["_shared", "nope", "disabled"]) {
        const response = await invoke(name, { headers: { authorization: `Bearer ${token}` } });
        assert.equal(response.status, 404);
        assert.equal(response.headers.get("access-control-allow-origin"), ORIGIN);
        assert.equal((await response.json()).error.code, "not_found");
      }
    });

    await t.step("a function's answer to a body it never read reaches the client", async () => {
      for (let i = 0; i < 5; i++) {
        const response = await invoke("early", { method: "POST", body: "x".repeat(1 << 20) });
        assert.equal(response.status, 413);
        assert.deepEqual(await response.json(), { declared: 1 << 20 });
      }
    });

    await t.step("a function reaches HTTPS hosts through this machine's certificates", async () => {
      const response = await invoke("tls-fetch");
      assert.deepEqual(await response.json(), { status: 200 });
    });

    await t.step("a crashed function answers the platform's 500 and is restarted", async () => {
      const before = await (await invoke("crashy")).json();
      const crashed = await invoke("crashy?crash", { headers: { origin: ORIGIN } });
      assert.equal(crashed.status, 500);
      assert.equal(crashed.headers.get("access-control-allow-origin"), ORIGIN);
      assert.deepEqual(await crashed.json(), {
        code: "WORKER_ERROR",
        message: "Function exited due to an error (please check logs)",
      });
      const after = await invoke("crashy");
      assert.equal(after.status, 200);
      assert.notEqual((await after.json()).pid, before.pid);
      const other = await invoke("open-echo");
      assert.equal(other.status, 200);
      await other.body?.cancel();
    });

    await t.step(
      "a function that fails to boot answers the platform's 503; the gateway keeps serving",
      async () => {
        const response = await invoke("broken");
        assert.equal(response.status, 503);
        assert.deepEqual(await response.json(), BOOT_ERROR);
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

Deno.test("the platform's limits: memory per process and wall clock per request", async (t) => {
  const gateway = await startGateway({
    FUNCTION_MEMORY_LIMIT_MB: "64",
    FUNCTION_WALL_CLOCK_MS: "1500",
  });
  const invoke = (path: string) =>
    fetch(`${gateway.url}/functions/v1/${path}`, { headers: { origin: ORIGIN } });
  const WORKER_LIMIT = {
    code: "WORKER_LIMIT",
    message: "Worker failed to respond due to a resource limit (please check logs)",
  };
  try {
    for (const kind of ["heap", "buffer"]) {
      await t.step(
        `a function over the memory cap (${kind}) is killed: 546 WORKER_LIMIT`,
        async () => {
          const before = await (await invoke("hog")).json();
          const response = await invoke(`hog?kind=${kind}`);
          assert.deepEqual(await response.json(), WORKER_LIMIT);
          assert.equal(response.status, 546);
          assert.ok(response.headers.has("access-control-allow-origin"));
          const after = await invoke("hog");
          assert.equal(after.status, 200);
          assert.notEqual((await after.json()).pid, before.pid, "a fresh process serves next");
        },
      );
    }

    await t.step("a function slower than the wall clock answers 504 in time", async () => {
      const started = performance.now();
      const response = await invoke("sleepy?ms=5000");
      const elapsed = performance.now() - started;
      assert.equal(response.status, 504);
      assert.deepEqual(await response.json(), {
        msg: "WorkerRequestIdleTimeout: request timed out",
      });
      assert.ok(elapsed >= 1_400 && elapsed < 5_000, `answered after ${elapsed.toFixed(0)} ms`);
      const quick = await invoke("sleepy?ms=10");
      assert.deepEqual(await quick.json(), { slept: 10 });
    });
  } finally {
    await gateway.stop();
  }
});

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    yield `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(`${dir}/${entry.name}`);
  }
}

Deno.test("a function process never downloads: a missing dependency is a BOOT_ERROR", async () => {
  const cache = await Deno.makeTempDir({ prefix: "empty-deno-dir-" });
  const gateway = await startGateway({ DENO_DIR: cache });
  try {
    const response = await fetch(`${gateway.url}/functions/v1/uncached`);
    assert.equal(response.status, 503);
    assert.deepEqual(await response.json(), BOOT_ERROR);
    const downloaded = await Array.fromAsync(walk(cache));
    assert.deepEqual(downloaded.filter((path) => path.includes("is-odd")), []);
  } finally {
    await gateway.stop();
    await Deno.remove(cache, { recursive: true });
  }
});
