/**
 * The RPC layer over real supabase-js, with PostgREST replaced by a fetch stub:
 * what goes over the wire, and how each PostgREST answer becomes an ApiError.
 */
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { ApiError } from "../../supabase/functions/_shared/http.ts";
import { rpcThrough } from "../../supabase/functions/_shared/rpc.ts";
import { DEVICE_ID } from "./fakes.ts";

function clientAnswering(answer: (request: Request) => Response | Promise<Response>) {
  const seen: Request[] = [];
  const client = createClient("http://127.0.0.1:54321", "sb_publishable_stub", {
    auth: { persistSession: false, autoRefreshToken: false },
    global: {
      fetch: (input, init) => {
        const request = new Request(input, init);
        seen.push(request);
        return Promise.resolve(answer(request));
      },
    },
  });
  return { rpc: rpcThrough(client), seen };
}

function postgrestError(status: number, body: Record<string, unknown>): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

async function failure(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ApiError);
    return error;
  }
  assert.fail("expected a failure");
}

Deno.test("an RPC posts its named arguments to /rest/v1/rpc/<name>", async () => {
  const { rpc, seen } = clientAnswering(() => Response.json({ ok: true }));
  assert.deepEqual(await rpc("get_device_qr", { p_device_id: DEVICE_ID }), { ok: true });
  assert.equal(seen.length, 1);
  assert.equal(new URL(seen[0].url).pathname, "/rest/v1/rpc/get_device_qr");
  assert.equal(seen[0].method, "POST");
  assert.deepEqual(await seen[0].json(), { p_device_id: DEVICE_ID });
});

Deno.test("a PT409 already_connected refusal keeps its code and status", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(409, { code: "PT409", message: "already_connected", details: null, hint: null })
  );
  const error = await failure(rpc("request_device_reassignment", { p_device_id: DEVICE_ID }));
  assert.equal(error.code, "already_connected");
  assert.equal(error.status, 409);
});

Deno.test("cooldown details become Retry-After seconds, rounded up", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(429, { code: "PT429", message: "cooldown", details: '{"retry_after_ms": 1200}' })
  );
  const error = await failure(rpc("request_device_reassignment", {}));
  assert.equal(error.code, "cooldown");
  assert.equal(error.retryAfterSeconds, 2);
  assert.deepEqual(error.details, { retry_after_ms: 1200 });
});

Deno.test("a refused connection is database_unavailable", async () => {
  const { rpc } = clientAnswering(() => Promise.reject(new TypeError("connection refused")));
  const error = await failure(rpc("get_device_qr", {}));
  assert.equal(error.code, "database_unavailable");
  assert.equal(error.status, 503);
  assert.ok(error.retryAfterSeconds! >= 1);
});

Deno.test("PostgREST without its database (PGRST001, 503) is database_unavailable", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(503, {
      code: "PGRST001",
      message: "Database client error. Retrying the connection.",
    })
  );
  assert.equal((await failure(rpc("get_device_qr", {}))).code, "database_unavailable");
});

Deno.test("a gateway 502 with an HTML body is database_unavailable", async () => {
  const { rpc } = clientAnswering(() => new Response("<html>Bad Gateway</html>", { status: 502 }));
  assert.equal((await failure(rpc("get_device_qr", {}))).code, "database_unavailable");
});

Deno.test("an unexpected SQL error is internal_error and its text is not passed on", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(400, {
      code: "42883",
      message: "function public.get_device_qr(p_device_id => text) does not exist",
      details: null,
      hint: "No function matches",
    })
  );
  const error = await failure(rpc("get_device_qr", {}));
  assert.equal(error.code, "internal_error");
  assert.doesNotMatch(error.message + JSON.stringify(error.details), /function public/);
});

Deno.test("an unknown PT message is not trusted as a code", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(409, { code: "PT409", message: "fenced", details: '{"device_id": "x"}' })
  );
  assert.equal((await failure(rpc("get_device_qr", {}))).code, "internal_error");
});

Deno.test("an expired token rejected by PostgREST (PGRST303) is unauthorized", async () => {
  const { rpc } = clientAnswering(() =>
    postgrestError(401, { code: "PGRST303", message: "JWT expired" })
  );
  assert.equal((await failure(rpc("get_device_qr", {}))).code, "unauthorized");
});
