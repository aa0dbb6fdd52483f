import assert from "node:assert/strict";
import { createReassignDeviceHandler } from "../../supabase/functions/reassign-device/handler.ts";
import { rpcError } from "../../supabase/functions/_shared/rpc.ts";
import {
  asOperator,
  asUser,
  DEVICE_ID,
  errorBody,
  rejectingAuth,
  request,
  scriptedRpc,
} from "./fakes.ts";

const URL_BASE = "http://localhost/functions/v1/reassign-device";

const REASSIGNED = {
  device_id: DEVICE_ID,
  reassigned: true,
  from_server: "11111111-1111-4111-8111-111111111111",
  to_server: "22222222-2222-4222-8222-222222222222",
  epoch: 4,
};

function userHandler(answer: Parameters<typeof scriptedRpc>[0] = () => REASSIGNED) {
  const { rpc, calls } = scriptedRpc(answer);
  return { handler: createReassignDeviceHandler({ authenticate: asUser(rpc) }), calls };
}

function operatorHandler(answer: Parameters<typeof scriptedRpc>[0]) {
  const { rpc, calls } = scriptedRpc(answer);
  return { handler: createReassignDeviceHandler({ authenticate: asOperator(rpc) }), calls };
}

function post(json: unknown): Request {
  return request(URL_BASE, { method: "POST", json });
}

function assertCors(response: Response) {
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  assert.equal(response.headers.get("cache-control"), "no-store");
}

Deno.test("preflight is 204 with CORS allowing POST", async () => {
  const { handler } = userHandler();
  const response = await handler(request(URL_BASE, { method: "OPTIONS" }));
  assert.equal(response.status, 204);
  assertCors(response);
  assert.match(response.headers.get("access-control-allow-methods") ?? "", /POST/);
});

for (const method of ["GET", "PUT", "DELETE", "PATCH"]) {
  Deno.test(`${method} is 405 with Allow: POST`, async () => {
    const { handler, calls } = userHandler();
    const response = await handler(request(URL_BASE, { method }));
    assert.equal(response.status, 405);
    assert.equal(response.headers.get("allow"), "POST, OPTIONS");
    assertCors(response);
    assert.equal((await errorBody(response)).code, "method_not_allowed");
    assert.equal(calls.length, 0);
  });
}

Deno.test("no credentials is 401 with CORS", async () => {
  const handler = createReassignDeviceHandler({ authenticate: rejectingAuth() });
  const response = await handler(post({ device_id: DEVICE_ID }));
  assert.equal(response.status, 401);
  assertCors(response);
  assert.equal((await errorBody(response)).code, "unauthorized");
});

// --- users ------------------------------------------------------------------------

Deno.test("a user reassigns their device with one request_device_reassignment RPC", async () => {
  const { handler, calls } = userHandler();
  const response = await handler(post({ device_id: DEVICE_ID }));
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), REASSIGNED);
  assert.deepEqual(calls.map((c) => [c.name, c.args]), [
    ["request_device_reassignment", { p_device_id: DEVICE_ID }],
  ]);
});

for (
  const [name, body] of [
    ["an operator scope", { scope: "inactive" }],
    ["scope device", { scope: "device", device_id: DEVICE_ID }],
    ["a dry run", { device_id: DEVICE_ID, dry_run: true }],
  ] as const
) {
  Deno.test(`a user token with ${name} is 403 forbidden, and nothing runs`, async () => {
    const { handler, calls } = userHandler();
    const response = await handler(post(body));
    assert.equal(response.status, 403);
    assertCors(response);
    assert.equal((await errorBody(response)).code, "forbidden");
    assert.equal(calls.length, 0);
  });
}

Deno.test("a user without device_id is 400", async () => {
  const { handler, calls } = userHandler();
  const response = await handler(post({}));
  assert.equal(response.status, 400);
  assert.equal((await errorBody(response)).code, "invalid_request");
  assert.equal(calls.length, 0);
});

Deno.test("a user with a bad UUID is 400", async () => {
  const { handler } = userHandler();
  const response = await handler(post({ device_id: "123" }));
  assert.equal(response.status, 400);
  await response.body?.cancel();
});

Deno.test("malformed JSON is 400", async () => {
  const { handler } = userHandler();
  const response = await handler(request(URL_BASE, { method: "POST", body: "{" }));
  assert.equal(response.status, 400);
  assert.equal((await errorBody(response)).code, "invalid_request");
});

Deno.test("a body over 16 KiB is 413", async () => {
  const { handler, calls } = userHandler();
  const response = await handler(post({ device_id: DEVICE_ID, pad: "x".repeat(16 * 1024) }));
  assert.equal(response.status, 413);
  assertCors(response);
  assert.equal((await errorBody(response)).code, "payload_too_large");
  assert.equal(calls.length, 0);
});

for (
  const [sqlMessage, pgCode, status, code, details, retryAfter] of [
    ["not_found", "PT404", 404, "not_found", null, null],
    ["already_connected", "PT409", 409, "already_connected", null, null],
    ["cooldown", "PT429", 429, "cooldown", '{"retry_after_ms": 12500}', "13"],
    ["no_active_servers", "PT503", 503, "no_active_servers", '{"retry_after_ms": 5000}', "5"],
  ] as const
) {
  Deno.test(`SQL ${sqlMessage} is ${status} ${code}${retryAfter ? " with Retry-After" : ""}`, async () => {
    const { handler } = userHandler(() =>
      rpcError(status, { code: pgCode, message: sqlMessage, details })
    );
    const response = await handler(post({ device_id: DEVICE_ID }));
    assert.equal(response.status, status);
    assertCors(response);
    assert.equal(response.headers.get("retry-after"), retryAfter);
    const error = await errorBody(response);
    assert.equal(error.code, code);
    if (details) assert.deepEqual(error.details, JSON.parse(details));
  });
}

Deno.test("an unreachable database is 503 database_unavailable with Retry-After", async () => {
  const { handler } = userHandler(() => rpcError(502, { code: "", message: "Bad Gateway" }));
  const response = await handler(post({ device_id: DEVICE_ID }));
  assert.equal(response.status, 503);
  assert.ok(response.headers.get("retry-after"));
  assert.equal((await errorBody(response)).code, "database_unavailable");
});

// --- operators ------------------------------------------------------------------------

const BULK = { scope: "inactive", dry_run: true, count: 2, devices: [] };

for (
  const [name, body, args] of [
    ["scope inactive", { scope: "inactive" }, {
      p_scope: "inactive",
      p_device_id: null,
      p_dry_run: false,
    }],
    [
      "scope all_connecting as a dry run",
      { scope: "all_connecting", dry_run: true },
      { p_scope: "all_connecting", p_device_id: null, p_dry_run: true },
    ],
    [
      "scope device",
      { scope: "device", device_id: DEVICE_ID },
      { p_scope: "device", p_device_id: DEVICE_ID, p_dry_run: false },
    ],
    [
      "a bare device_id (scope device implied)",
      { device_id: DEVICE_ID, dry_run: true },
      { p_scope: "device", p_device_id: DEVICE_ID, p_dry_run: true },
    ],
  ] as const
) {
  Deno.test(`an operator with ${name} calls reassign_devices once`, async () => {
    const { handler, calls } = operatorHandler(() => BULK);
    const response = await handler(post(body));
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), BULK);
    assert.deepEqual(calls.map((c) => [c.name, c.args]), [["reassign_devices", args]]);
  });
}

Deno.test("an operator with scope health reads assignment_health", async () => {
  const health = { now: "2026-11-28T19:00:00Z", servers: [], orphaned: 0, stale: 0 };
  const { handler, calls } = operatorHandler(() => health);
  const response = await handler(post({ scope: "health" }));
  assert.deepEqual(await response.json(), health);
  assert.deepEqual(calls.map((c) => c.name), ["assignment_health"]);
});

for (
  const [name, body, path] of [
    ["an unknown scope", { scope: "everything" }, "scope"],
    ["no scope at all", {}, "scope"],
    ["scope device without device_id", { scope: "device" }, "device_id"],
    ["device_id with scope inactive", { scope: "inactive", device_id: DEVICE_ID }, "device_id"],
    ["a dry_run that is not a boolean", { scope: "inactive", dry_run: "yes" }, "dry_run"],
  ] as const
) {
  Deno.test(`an operator with ${name} is 400 naming ${path}`, async () => {
    const { handler, calls } = operatorHandler(() => BULK);
    const response = await handler(post(body));
    assert.equal(response.status, 400);
    const error = await errorBody(response);
    assert.equal(error.code, "invalid_request");
    const issues = (error.details as { issues: { path: string }[] }).issues;
    assert.ok(issues.some((i) => i.path === path), JSON.stringify(issues));
    assert.equal(calls.length, 0);
  });
}

Deno.test("an operator hitting no live server is 503 no_active_servers", async () => {
  const { handler } = operatorHandler(() =>
    rpcError(503, {
      code: "PT503",
      message: "no_active_servers",
      details: '{"retry_after_ms": 3000}',
    })
  );
  const response = await handler(post({ scope: "inactive" }));
  assert.equal(response.status, 503);
  assert.equal(response.headers.get("retry-after"), "3");
  assert.equal((await errorBody(response)).code, "no_active_servers");
});
