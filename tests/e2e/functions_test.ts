/**
 * get-device-qr and reassign-device over HTTP, as a frontend and an operator
 * call them: supabase-js `functions.invoke` for the happy paths, raw `fetch`
 * where status codes and headers are the point. Runs against the stack
 * tests/e2e/harness.ts finds or starts.
 */
import assert from "node:assert/strict";
import QRCode from "qrcode";
import * as jose from "jose";
import { decodeQrPng } from "../functions/qr_decode.ts";
import { renderModules } from "./svg_modules.ts";
import {
  closeStack,
  createUser,
  getStack,
  mintAccessToken,
  serviceClient,
  sql,
  type TestUser,
  userClient,
} from "./harness.ts";

const CORS_HEADERS = ["authorization", "x-client-info", "apikey", "content-type"];

// --- fixtures ------------------------------------------------------------------------

/** A live backend server of its own, registered through the worker API. */
async function liveServer(): Promise<{ id: string; name: string }> {
  const name = `e2e-fn-${crypto.randomUUID().slice(0, 8)}`;
  const { data, error } = await (await serviceClient()).rpc("server_heartbeat", {
    p_server_name: name,
    p_current_load: 0,
    p_max_capacity: 10_000,
  });
  assert.equal(error, null, JSON.stringify(error));
  return { id: data.server_id, name };
}

interface Device {
  id: string;
  owner: TestUser;
  token: string;
}

/** A device of a new user; `connecting` on `serverId` unless another state is given. */
async function device(
  options: { serverId?: string | null; status?: string; owner?: TestUser } = {},
): Promise<Device> {
  const owner = options.owner ?? await createUser();
  const db = await sql();
  const status = options.status ?? "connecting";
  const serverId = options.serverId ?? null;
  const [row] = await db`
    insert into public.devices (user_id, device_name, status, assigned_server_id, assignment_epoch,
                                assigned_at, connecting_since)
    values (${owner.id}, 'e2e phone', ${status}, ${serverId}, 1,
            ${serverId ? new Date() : null}, ${status === "connecting" ? new Date() : null})
    returning id`;
  return { id: row.id, owner, token: await mintAccessToken(owner.id) };
}

/** Publishes a QR as the device's current server would (fenced by its epoch). */
async function publish(deviceId: string, qr: string): Promise<void> {
  const db = await sql();
  const [row] = await db`
    select assigned_server_id, assignment_epoch from public.devices where id = ${deviceId}`;
  const { error } = await (await serviceClient()).rpc("publish_device_qr", {
    p_device_id: deviceId,
    p_server_id: row.assigned_server_id,
    p_epoch: row.assignment_epoch,
    p_qr: qr,
    p_expires_at: new Date(Date.now() + 60_000).toISOString(),
  });
  assert.equal(error, null, JSON.stringify(error));
}

async function fn(
  name: "get-device-qr" | "reassign-device",
  init: RequestInit & { query?: string; token?: string; json?: unknown } = {},
): Promise<Response> {
  const stack = await getStack();
  const headers = new Headers(init.headers);
  if (init.token) headers.set("authorization", `Bearer ${init.token}`);
  if (!headers.has("apikey")) headers.set("apikey", stack.publishableKey);
  if (init.json !== undefined) headers.set("content-type", "application/json");
  return await fetch(`${stack.url}/functions/v1/${name}${init.query ? `?${init.query}` : ""}`, {
    ...init,
    headers,
    body: init.json !== undefined ? JSON.stringify(init.json) : init.body,
  });
}

function assertCorsAndNoStore(response: Response): void {
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  const allowed = (response.headers.get("access-control-allow-headers") ?? "").toLowerCase();
  for (const header of CORS_HEADERS) assert.ok(allowed.includes(header), `${header} in ${allowed}`);
  assert.equal(response.headers.get("cache-control"), "no-store");
}

/** Asserts one row of the contract's error table, and returns the error body. */
async function expectError(response: Response, status: number, code: string) {
  const text = await response.text();
  assert.equal(response.status, status, text);
  assertCorsAndNoStore(response);
  const body = JSON.parse(text);
  assert.equal(body.error.code, code, text);
  assert.equal(typeof body.error.message, "string");
  assert.ok("details" in body.error);
  assert.doesNotMatch(text, /sb_secret_|eyJhbGci|select |\bat .*\.ts:/);
  return body.error;
}

const test = (name: string, body: () => Promise<void>) =>
  Deno.test({
    name,
    fn: async () => {
      try {
        await body();
      } finally {
        await closeStack();
      }
    },
  });

// --- CORS and methods --------------------------------------------------------------------

for (const name of ["get-device-qr", "reassign-device"] as const) {
  test(`${name}: preflight is answered with CORS, without credentials`, async () => {
    const stack = await getStack();
    const response = await fetch(`${stack.url}/functions/v1/${name}`, {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example.com",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
      },
    });
    await response.body?.cancel();
    assert.ok(response.status === 200 || response.status === 204, String(response.status));
    assertCorsAndNoStore(response);
    assert.match(response.headers.get("access-control-allow-methods") ?? "", /POST/);
  });

  test(`${name}: no credentials is 401 unauthorized with CORS`, async () => {
    const stack = await getStack();
    const response = await fetch(`${stack.url}/functions/v1/${name}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ device_id: crypto.randomUUID() }),
    });
    await expectError(response, 401, "unauthorized");
  });
}

test("get-device-qr: PUT is 405 with Allow", async () => {
  const d = await device();
  const response = await fn("get-device-qr", { method: "PUT", token: d.token, json: {} });
  await expectError(response, 405, "method_not_allowed");
  assert.match(response.headers.get("allow") ?? "", /GET/);
  assert.match(response.headers.get("allow") ?? "", /POST/);
});

test("reassign-device: GET is 405 with Allow: POST", async () => {
  const d = await device();
  const response = await fn("reassign-device", { token: d.token, query: `device_id=${d.id}` });
  await expectError(response, 405, "method_not_allowed");
  assert.match(response.headers.get("allow") ?? "", /^POST/);
});

// --- 401 -----------------------------------------------------------------------------------

test("an expired, a forged and a malformed token are each 401", async () => {
  const d = await device();
  const expired = await mintAccessToken(d.owner.id, { expiresIn: -120 });
  const { privateKey } = await jose.generateKeyPair("ES256");
  const forged = await new jose.SignJWT({
    sub: d.owner.id,
    role: "authenticated",
    aud: "authenticated",
  })
    .setProtectedHeader({ alg: "ES256", kid: "not-our-key" })
    .setExpirationTime("1h")
    .sign(privateKey);
  for (const token of [expired, forged, "not-a-jwt"]) {
    await expectError(
      await fn("get-device-qr", { token, query: `device_id=${d.id}` }),
      401,
      "unauthorized",
    );
    await expectError(
      await fn("reassign-device", { method: "POST", token, json: { device_id: d.id } }),
      401,
      "unauthorized",
    );
  }
});

// --- 400, 413 --------------------------------------------------------------------------------

test("bad input is 400 invalid_request with the zod issues", async () => {
  const d = await device();
  for (
    const query of [
      "device_id=not-a-uuid",
      `device_id=${d.id}&format=gif`,
      `device_id=${d.id}&wait=26`,
      `device_id=${d.id}&since=last-tuesday`,
    ]
  ) {
    const error = await expectError(
      await fn("get-device-qr", { token: d.token, query }),
      400,
      "invalid_request",
    );
    assert.ok(Array.isArray(error.details.issues), query);
  }
  await expectError(
    await fn("get-device-qr", {
      method: "POST",
      token: d.token,
      body: "{not json",
      headers: { "content-type": "application/json" },
    }),
    400,
    "invalid_request",
  );
  await expectError(
    await fn("reassign-device", { method: "POST", token: d.token, json: { device_id: "123" } }),
    400,
    "invalid_request",
  );
});

test("a body over 16 KiB is 413 payload_too_large", async () => {
  const d = await device();
  const json = { device_id: d.id, padding: "x".repeat(17 * 1024) };
  await expectError(
    await fn("get-device-qr", { method: "POST", token: d.token, json }),
    413,
    "payload_too_large",
  );
  await expectError(
    await fn("reassign-device", { method: "POST", token: d.token, json }),
    413,
    "payload_too_large",
  );
});

// --- 404 ---------------------------------------------------------------------------------------

test("another user's device is 404, exactly like a missing one", async () => {
  const server = await liveServer();
  const alices = await device({ serverId: server.id });
  const bob = await device();
  const theirs = await expectError(
    await fn("get-device-qr", { token: bob.token, query: `device_id=${alices.id}` }),
    404,
    "not_found",
  );
  const missing = await expectError(
    await fn("get-device-qr", { token: bob.token, query: `device_id=${crypto.randomUUID()}` }),
    404,
    "not_found",
  );
  assert.deepEqual(theirs, missing);
  await expectError(
    await fn("reassign-device", {
      method: "POST",
      token: bob.token,
      json: { device_id: alices.id },
    }),
    404,
    "not_found",
  );
});

// --- get-device-qr happy paths -------------------------------------------------------------------

test("invoke returns the contract body with a fresh QR and its PNG data URL", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const value = `2@${crypto.randomUUID()},e2e-json`;
  await publish(d.id, value);

  const { data, error } = await (await userClient(d.token)).functions.invoke("get-device-qr", {
    body: { device_id: d.id },
  });
  assert.equal(error, null);
  assert.equal(data.device_id, d.id);
  assert.equal(data.status, "ready");
  assert.equal(data.qr.value, value);
  assert.ok(Date.parse(data.qr.updated_at) > 0 && Date.parse(data.qr.expires_at) > Date.now());
  assert.deepEqual(data.server, { id: server.id, name: server.name });
  assert.equal(data.reassigned, false);
  assert.equal(typeof data.retry_after_ms, "number");
  const png = Uint8Array.from(atob(data.qr.image.split(",")[1]), (c) => c.charCodeAt(0));
  assert.equal(decodeQrPng(png), value);
});

test("format=png bytes decode back to the stored QR value", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const value = `2@${crypto.randomUUID()},png-check,${"A".repeat(120)}`;
  await publish(d.id, value);
  const response = await fn("get-device-qr", {
    token: d.token,
    query: `device_id=${d.id}&format=png`,
  });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "image/png");
  assertCorsAndNoStore(response);
  assert.equal(decodeQrPng(new Uint8Array(await response.arrayBuffer())), value);
});

test("format=svg is an SVG of the same code", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const value = `2@${crypto.randomUUID()},svg-check`;
  await publish(d.id, value);
  const response = await fn("get-device-qr", {
    token: d.token,
    query: `device_id=${d.id}&format=svg`,
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^image\/svg\+xml/);
  const svg = await response.text();
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*>.*<\/svg>\s*$/s);
  const drawn = renderModules(svg);
  const expected = QRCode.create(value, { errorCorrectionLevel: "M" }).modules;
  assert.equal(drawn.size - 4, expected.size, "2-module margin on each side");
  for (let y = 0; y < expected.size; y++) {
    for (let x = 0; x < expected.size; x++) {
      assert.equal(drawn.dark(x + 2, y + 2), Boolean(expected.get(y, x)), `module ${x},${y}`);
    }
  }
});

test("a legacy data:image/png value is served as PNG bytes", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const value = `legacy-${crypto.randomUUID()}`;
  const legacy = await QRCode.toDataURL(value);
  await publish(d.id, legacy);
  const response = await fn("get-device-qr", {
    token: d.token,
    query: `device_id=${d.id}&format=png`,
  });
  assert.equal(response.status, 200);
  const bytes = new Uint8Array(await response.arrayBuffer());
  assert.equal(decodeQrPng(bytes), value);
  const json = await (await fn("get-device-qr", { token: d.token, query: `device_id=${d.id}` }))
    .json();
  assert.equal(json.qr.image, legacy);
});

test("format=png without a fresh QR is 202 JSON with Retry-After", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const response = await fn("get-device-qr", {
    token: d.token,
    query: `device_id=${d.id}&format=png`,
  });
  assert.equal(response.status, 202);
  assertCorsAndNoStore(response);
  assert.ok(Number(response.headers.get("retry-after")) >= 1);
  const body = await response.json();
  assert.equal(body.status, "pending");
  assert.equal(body.qr, null);
});

test("a dead server's device is reassigned inside the get-device-qr call", async () => {
  const dead = await liveServer();
  const alive = await liveServer();
  const d = await device({ serverId: dead.id });
  const db = await sql();
  await db`update public.backend_servers
              set last_health_ping = now() - interval '10 minutes' where id = ${dead.id}`;

  const { data, error } = await (await userClient(d.token)).functions.invoke("get-device-qr", {
    body: { device_id: d.id },
  });
  assert.equal(error, null);
  assert.equal(data.status, "pending");
  assert.equal(data.reassigned, true);
  assert.equal(data.reason, "reassigned_from_inactive_server");
  assert.notEqual(data.server?.id, dead.id);
  assert.ok(data.server?.id, "moved to a live server");
  const [row] = await db`select assigned_server_id from public.devices where id = ${d.id}`;
  assert.equal(row.assigned_server_id, data.server.id);
  void alive;
});

test("a linked device whose server dies is reconnecting, then connected on another server, no QR", async () => {
  const service = await serviceClient();
  const dying = await liveServer();
  await liveServer();
  const d = await device({ serverId: dying.id });
  const fenced = { p_device_id: d.id, p_server_id: dying.id, p_epoch: 1 };
  // The first server links the device and stores its session, as a backend does.
  for (
    const [rpc, args] of [
      ["report_device_status", { ...fenced, p_status: "connected" }],
      ["device_session_write", {
        ...fenced,
        p_entries: [{ type: "creds", id: "creds", value: "sealed-creds" }],
      }],
    ] as const
  ) {
    const { error } = await service.rpc(rpc, args);
    assert.equal(error, null, JSON.stringify(error));
  }
  const db = await sql();
  await db`update public.backend_servers
              set last_health_ping = now() - interval '10 minutes' where id = ${dying.id}`;

  const first = await (await fn("get-device-qr", { token: d.token, query: `device_id=${d.id}` }))
    .json();
  assert.equal(first.status, "reconnecting");
  assert.equal(first.reason, "session_failover");
  assert.equal(first.qr, null);
  assert.ok(first.retry_after_ms > 0);
  assert.notEqual(first.server?.id, dying.id);

  // The client long-polls while the new server resumes the session and reports connected.
  const answer = fn("get-device-qr", { token: d.token, query: `device_id=${d.id}&wait=15` });
  await new Promise((resolve) => setTimeout(resolve, 500));
  const { data: claimed, error: claimError } = await service.rpc("claim_devices", {
    p_server_id: first.server.id,
    p_limit: 10_000,
  });
  assert.equal(claimError, null, JSON.stringify(claimError));
  const resume = claimed.find((row: { device_id: string }) => row.device_id === d.id);
  assert.equal(resume?.status, "reconnecting", "the claim says: resume this session");
  const next = {
    p_device_id: d.id,
    p_server_id: first.server.id,
    p_epoch: resume.assignment_epoch,
  };
  const { data: creds } = await service.rpc("device_session_read", {
    ...next,
    p_type: "creds",
    p_ids: ["creds"],
  });
  assert.deepEqual(creds, { creds: "sealed-creds" });
  const { error } = await service.rpc("report_device_status", { ...next, p_status: "connected" });
  assert.equal(error, null, JSON.stringify(error));
  const body = await (await answer).json();
  assert.equal(body.status, "connected");
  assert.equal(body.server.id, first.server.id);
  const { error: late } = await service.rpc("device_session_write", {
    ...fenced,
    p_entries: [{ type: "creds", id: "creds", value: "late" }],
  });
  assert.equal(late?.message, "fenced", "the dead server's late write is refused");
});

test("long-poll returns when a QR is published, not before", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const value = `2@${crypto.randomUUID()},long-poll`;
  const started = Date.now();
  const publishAfterMs = 1500;
  const answer = fn("get-device-qr", { token: d.token, query: `device_id=${d.id}&wait=15` });
  await new Promise((resolve) => setTimeout(resolve, publishAfterMs));
  await publish(d.id, value);
  const response = await answer;
  const elapsed = Date.now() - started;
  const body = await response.json();
  assert.equal(body.status, "ready");
  assert.equal(body.qr.value, value);
  assert.ok(elapsed >= publishAfterMs, `answered after ${elapsed} ms, before the publish`);
  assert.ok(elapsed < publishAfterMs + 4000, `answered ${elapsed} ms after start: too late`);
});

test("long-poll with since holds the current QR until the wait ends", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  await publish(d.id, `2@${crypto.randomUUID()},held`);
  const first = await (await fn("get-device-qr", { token: d.token, query: `device_id=${d.id}` }))
    .json();
  const started = Date.now();
  const since = encodeURIComponent(first.qr.updated_at);
  const body = await (await fn("get-device-qr", {
    token: d.token,
    query: `device_id=${d.id}&wait=2&since=${since}`,
  })).json();
  const elapsed = Date.now() - started;
  assert.equal(body.qr.value, first.qr.value);
  assert.ok(elapsed >= 1900, `answered after ${elapsed} ms, before the wait ended`);
});

// --- linking by phone number ----------------------------------------------------------------------

test("a pairing code round trip: the user asks, the server publishes, the user's wait ends with it", async () => {
  const server = await liveServer();
  const d = await device({ serverId: server.id });
  const service = await serviceClient();

  // The user asks and long-polls; the number travels formatted and is checked at the edge.
  const started = Date.now();
  const answer = (await userClient(d.token)).functions.invoke("get-device-qr", {
    body: { device_id: d.id, pairing_phone: "+1 415-555-0123", wait: 15 },
  });

  // A fake backend server: claim until the device comes with a number, then publish a code.
  let phone: string | null = null;
  let epoch = 0;
  for (let i = 0; i < 50 && !phone; i++) {
    const { data, error } = await service.rpc("claim_devices", { p_server_id: server.id });
    assert.equal(error, null, JSON.stringify(error));
    const row = data.find((r: { device_id: string }) => r.device_id === d.id);
    phone = row?.pairing_phone ?? null;
    epoch = row?.assignment_epoch ?? 0;
    if (!phone) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(phone, "14155550123", "the server gets the number as E.164 digits");
  const code = `E2E${crypto.randomUUID().slice(0, 5).toUpperCase()}`;
  const expiresAt = new Date(Date.now() + 120_000).toISOString();
  const published = await service.rpc("publish_device_pairing_code", {
    p_device_id: d.id,
    p_server_id: server.id,
    p_epoch: epoch,
    p_code: code,
    p_expires_at: expiresAt,
  });
  assert.equal(published.error, null, JSON.stringify(published.error));

  const { data, error } = await answer;
  assert.equal(error, null);
  assert.equal(data.pairing_code.code, code);
  assert.equal(Date.parse(data.pairing_code.expires_at), Date.parse(expiresAt));
  assert.ok(Date.now() - started < 10_000, "the wait ended when the code appeared");

  // The server is not asked again while the code is fresh.
  const again = await service.rpc("claim_devices", { p_server_id: server.id });
  assert.equal(
    again.data.find((r: { device_id: string }) => r.device_id === d.id).pairing_phone,
    null,
  );

  // A second request within the cooldown: 429 with Retry-After, the contract's body and CORS.
  const refused = await fn("get-device-qr", {
    method: "POST",
    token: d.token,
    json: { device_id: d.id, pairing_phone: "+14155550123" },
  });
  const retryAfter = Number(refused.headers.get("retry-after"));
  await expectError(refused, 429, "cooldown");
  assert.ok(retryAfter >= 50 && retryAfter <= 60, `Retry-After ${retryAfter}`);
});

// --- reassign-device ---------------------------------------------------------------------------

test("a user reassigns their idle device through invoke", async () => {
  const server = await liveServer();
  const d = await device({ status: "disconnected" });
  const { data, error } = await (await userClient(d.token)).functions.invoke("reassign-device", {
    body: { device_id: d.id },
  });
  assert.equal(error, null);
  assert.equal(data.device_id, d.id);
  assert.equal(data.reassigned, true);
  assert.equal(data.from_server, null);
  assert.ok(data.to_server);
  assert.equal(typeof data.epoch, "number");
  void server;
});

test("reassigning a connected device is 409 already_connected", async () => {
  await liveServer();
  const d = await device({ status: "connected" });
  await expectError(
    await fn("reassign-device", { method: "POST", token: d.token, json: { device_id: d.id } }),
    409,
    "already_connected",
  );
});

test("reassigning twice in a row is 429 cooldown with Retry-After", async () => {
  await liveServer();
  const d = await device({ status: "disconnected" });
  const first = await fn("reassign-device", {
    method: "POST",
    token: d.token,
    json: { device_id: d.id },
  });
  assert.equal(first.status, 200, await first.text());
  const second = await fn("reassign-device", {
    method: "POST",
    token: d.token,
    json: { device_id: d.id },
  });
  await expectError(second, 429, "cooldown");
  assert.ok(Number(second.headers.get("retry-after")) >= 1);
});

test("operator scopes with a user token are 403 forbidden and change nothing", async () => {
  const d = await device({ status: "disconnected" });
  const db = await sql();
  const [before] = await db`select assignment_epoch from public.devices where id = ${d.id}`;
  for (
    const json of [
      { scope: "inactive" },
      { scope: "all_connecting", dry_run: true },
      { scope: "device", device_id: d.id },
    ]
  ) {
    await expectError(
      await fn("reassign-device", { method: "POST", token: d.token, json }),
      403,
      "forbidden",
    );
  }
  const [after] = await db`select assignment_epoch from public.devices where id = ${d.id}`;
  assert.equal(after.assignment_epoch, before.assignment_epoch);
});

test("an operator dry run reports the orphaned device and changes nothing", async () => {
  const dead = await liveServer();
  await liveServer();
  const d = await device({ serverId: dead.id });
  const db = await sql();
  await db`update public.backend_servers set is_active = false where id = ${dead.id}`;
  const snapshot = () =>
    db`select assigned_server_id, assignment_epoch, status from public.devices where id = ${d.id}`;
  const [before] = await snapshot();
  const [events] =
    await db`select count(*)::int as n from public.device_assignment_events where device_id = ${d.id}`;

  const stack = await getStack();
  const response = await fn("reassign-device", {
    method: "POST",
    headers: { apikey: stack.secretKey },
    json: { scope: "inactive", dry_run: true },
  });
  assert.equal(response.status, 200);
  assertCorsAndNoStore(response);
  const body = await response.json();
  assert.equal(body.scope, "inactive");
  assert.equal(body.dry_run, true);
  const mine = body.devices.find((x: { id: string }) => x.id === d.id);
  assert.ok(mine, "the orphaned device is listed");
  assert.equal(mine.from, dead.id);

  // pg_cron's maintenance pass may heal the orphan at any moment; only the operator must not have.
  const [after] = await snapshot();
  const [byOperator] = await db`
    select count(*)::int as n from public.device_assignment_events
     where device_id = ${d.id} and actor = 'operator'`;
  assert.equal(byOperator.n, 0, "the dry run wrote an audit row");
  if (after.assignment_epoch === before.assignment_epoch) {
    assert.deepEqual({ ...after }, { ...before });
    const [eventsAfter] = await db`
      select count(*)::int as n from public.device_assignment_events where device_id = ${d.id}`;
    assert.equal(eventsAfter.n, events.n);
  }
});

test("an operator resets one device with the secret key", async () => {
  const server = await liveServer();
  const d = await device({ status: "disconnected" });
  const stack = await getStack();
  const response = await fn("reassign-device", {
    method: "POST",
    headers: { apikey: stack.secretKey },
    json: { scope: "device", device_id: d.id },
  });
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.equal(body.count, 1);
  assert.equal(body.devices[0].id, d.id);
  const db = await sql();
  const [row] = await db`select status from public.devices where id = ${d.id}`;
  assert.equal(row.status, "connecting");
  void server;
});

test("the legacy service-role key is an operator too, until the project disables it", async () => {
  const stack = await getStack();
  const response = await fn("reassign-device", {
    method: "POST",
    headers: { apikey: stack.serviceRoleKey, authorization: `Bearer ${stack.serviceRoleKey}` },
    json: { scope: "health" },
  });
  if (stack.kind === "signing") {
    // A migrated project's legacy keys are disabled: the database refuses the key.
    await expectError(response, 401, "unauthorized");
    return;
  }
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  assert.ok(Array.isArray(body.servers));
});

// --- 503 ------------------------------------------------------------------------------------------

test("no live server: reassign-device is 503 no_active_servers, get-device-qr is 200 pending", async () => {
  const db = await sql();
  const d = await device({ status: "disconnected" });
  const orphan = await device({ serverId: null });
  // Every server of this database stops being live for the length of this test, then comes back.
  const paused = await db`
      update public.backend_servers set is_active = false where is_active returning id`;
  try {
    const response = await fn("reassign-device", {
      method: "POST",
      token: d.token,
      json: { device_id: d.id },
    });
    await expectError(response, 503, "no_active_servers");
    assert.ok(Number(response.headers.get("retry-after")) >= 1);

    const qr = await fn("get-device-qr", { token: orphan.token, query: `device_id=${orphan.id}` });
    assert.equal(qr.status, 200);
    const body = await qr.json();
    assert.equal(body.status, "pending");
    assert.equal(body.reason, "no_active_servers");
  } finally {
    const ids = paused.map((row) => row.id);
    if (ids.length > 0) {
      await db`update public.backend_servers set is_active = true where id in ${db(ids)}`;
    }
  }
});

test("a fleet-wide failure is an incident: owners wait at no cost, and the next QR ends it", async () => {
  const db = await sql();
  const service = await serviceClient();
  const servers = [await liveServer(), await liveServer(), await liveServer()];
  // These three are the fleet for the length of this test, then the others come back.
  const paused = await db`
      update public.backend_servers set is_active = false
       where is_active and id not in ${db(servers.map((s) => s.id))} returning id`;
  try {
    const owner = await createUser();
    const failed = [
      await device({ serverId: servers[0].id, owner }),
      await device({ serverId: servers[1].id, owner }),
    ];
    const fresh = await device({ serverId: servers[2].id, owner });
    for (const [i, d] of failed.entries()) {
      const { error } = await service.rpc("report_device_status", {
        p_device_id: d.id,
        p_server_id: servers[i].id,
        p_epoch: 1,
        p_status: "error",
        p_error: "version_outdated: Connection Failure",
      });
      assert.equal(error, null, JSON.stringify(error));
    }

    const qr = await fn("get-device-qr", {
      token: failed[0].token,
      query: `device_id=${failed[0].id}`,
    });
    const body = await qr.json();
    assert.equal(body.status, "pending");
    assert.equal(body.reason, "fleet_incident");
    assert.equal(body.last_error_code, "version_outdated");
    assert.equal(body.incident.code, "version_outdated", "the response names the incident");
    assert.ok(Date.parse(body.incident.since) <= Date.now(), "and when it started");
    assert.equal(body.retry_after_ms, 5000);

    const again = await fn("reassign-device", {
      method: "POST",
      token: failed[0].token,
      json: { device_id: failed[0].id },
    });
    assert.equal((await again.json()).reason, "fleet_incident");
    const [{ charged }] = await db`
      select count(*)::int as charged from public.device_assignment_events
       where device_id = ${failed[0].id} and reason = 'user_request'`;
    assert.equal(charged, 0, "a reassignment during the incident charges nothing");
    const [health] = await db`select public.assignment_health() -> 'incidents' as incidents`;
    assert.deepEqual(health.incidents.map((i: { code: string }) => i.code), ["version_outdated"]);

    // A QR from any server: WhatsApp takes the fleet again.
    await publish(fresh.id, "2@after-the-incident");
    const rows = await db`
      select status, assigned_server_id, reassign_count from public.devices
       where id in ${db(failed.map((d) => d.id))}`;
    assert.deepEqual(rows.map((r) => [r.status, r.assigned_server_id, r.reassign_count]), [
      ["connecting", null, 0],
      ["connecting", null, 0],
    ]);
  } finally {
    const ids = paused.map((row) => row.id);
    if (ids.length > 0) {
      await db`update public.backend_servers set is_active = true where id in ${db(ids)}`;
    }
  }
});

test("an unreachable database is 503 database_unavailable with Retry-After", async () => {
  const stack = await getStack();
  const d = await device();
  const jwks = await (await fetch(`${stack.url}/auth/v1/.well-known/jwks.json`)).json();
  const port = freePort();
  const deadApi = `http://127.0.0.1:${freePort()}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "serve",
      "--allow-all",
      "--quiet",
      "--port",
      String(port),
      "--config",
      "supabase/functions/get-device-qr/deno.json",
      "supabase/functions/get-device-qr/index.ts",
    ],
    cwd: new URL("../../", import.meta.url).pathname,
    env: {
      SUPABASE_URL: deadApi,
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: stack.publishableKey }),
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: stack.secretKey }),
      SUPABASE_JWKS: JSON.stringify(jwks),
    },
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const url = `http://127.0.0.1:${port}/get-device-qr?device_id=${d.id}`;
    let response: Response | null = null;
    for (let i = 0; i < 150 && !response; i++) {
      try {
        response = await fetch(url, { headers: { authorization: `Bearer ${d.token}` } });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    assert.ok(response, "the function process did not start");
    await expectError(response, 503, "database_unavailable");
    assert.ok(Number(response.headers.get("retry-after")) >= 1);
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
});

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
