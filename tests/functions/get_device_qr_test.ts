import assert from "node:assert/strict";
import { createGetDeviceQrHandler } from "../../supabase/functions/get-device-qr/handler.ts";
import { ApiError } from "../../supabase/functions/_shared/http.ts";
import { CachedQrImages } from "../../supabase/functions/_shared/qr.ts";
import { rpcError } from "../../supabase/functions/_shared/rpc.ts";
import {
  asUser,
  DEVICE_ID,
  errorBody,
  FakeClock,
  readyState,
  rejectingAuth,
  request,
  scriptedRpc,
  sqlQrState,
} from "./fakes.ts";
import { decodeQrPng } from "./qr_decode.ts";

const URL_BASE = "http://localhost/functions/v1/get-device-qr";
const images = new CachedQrImages();

function handlerFor(
  answer: Parameters<typeof scriptedRpc>[0],
  options: { clock?: FakeClock; allowedOrigins?: string } = {},
) {
  const clock = options.clock ?? new FakeClock();
  const { rpc, calls } = scriptedRpc(answer, clock);
  const handler = createGetDeviceQrHandler({
    authenticate: asUser(rpc),
    images,
    clock,
    allowedOrigins: options.allowedOrigins,
  });
  return { handler, calls, clock };
}

const decodePng = decodeQrPng;

function assertCommonHeaders(response: Response) {
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  assert.match(response.headers.get("access-control-allow-headers") ?? "", /authorization/);
  assert.match(response.headers.get("access-control-allow-headers") ?? "", /apikey/);
  assert.equal(response.headers.get("cache-control"), "no-store");
  assert.equal(response.headers.get("x-content-type-options"), "nosniff");
}

// --- methods and preflight --------------------------------------------------

Deno.test("preflight answers 204 with CORS and no auth or RPC", async () => {
  let authCalled = false;
  const handler = createGetDeviceQrHandler({
    authenticate: () => {
      authCalled = true;
      throw new Error("must not be called");
    },
    images,
  });
  const response = await handler(request(URL_BASE, { method: "OPTIONS" }));
  assert.equal(response.status, 204);
  assertCommonHeaders(response);
  assert.match(response.headers.get("access-control-allow-methods") ?? "", /GET/);
  assert.equal(authCalled, false);
});

Deno.test("a PUT is 405 with an Allow header listing GET and POST", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  const response = await handler(request(URL_BASE, { method: "PUT" }));
  assert.equal(response.status, 405);
  assert.equal(response.headers.get("allow"), "GET, POST, OPTIONS");
  assertCommonHeaders(response);
  assert.equal((await errorBody(response)).code, "method_not_allowed");
  assert.equal(calls.length, 0);
});

Deno.test("ALLOWED_ORIGINS echoes a listed origin and varies on Origin", async () => {
  const { handler } = handlerFor(() => sqlQrState(), {
    allowedOrigins: "https://app.example.com, https://admin.example.com",
  });
  const response = await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}`, {
      headers: { origin: "https://admin.example.com" },
    }),
  );
  assert.equal(response.headers.get("access-control-allow-origin"), "https://admin.example.com");
  assert.equal(response.headers.get("vary"), "Origin");
  await response.body?.cancel();
});

Deno.test("an origin outside ALLOWED_ORIGINS is not echoed back", async () => {
  const { handler } = handlerFor(() => sqlQrState(), { allowedOrigins: "https://app.example.com" });
  const response = await handler(
    request(URL_BASE, { method: "OPTIONS", headers: { origin: "https://evil.example.com" } }),
  );
  assert.equal(response.headers.get("access-control-allow-origin"), "https://app.example.com");
});

// --- auth ---------------------------------------------------------------------

Deno.test("missing credentials are 401 with CORS, no-store and the error body", async () => {
  const handler = createGetDeviceQrHandler({ authenticate: rejectingAuth(), images });
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 401);
  assertCommonHeaders(response);
  const error = await errorBody(response);
  assert.equal(error.code, "unauthorized");
  assert.equal(typeof error.message, "string");
});

// --- validation ---------------------------------------------------------------

for (
  const [name, query, path] of [
    ["a missing device_id", "", "device_id"],
    ["a bad UUID", "device_id=not-a-uuid", "device_id"],
    ["an unknown format", `device_id=${DEVICE_ID}&format=gif`, "format"],
    ["a wait over 25 s", `device_id=${DEVICE_ID}&wait=26`, "wait"],
    ["a negative wait", `device_id=${DEVICE_ID}&wait=-1`, "wait"],
    ["a wait that is not a number", `device_id=${DEVICE_ID}&wait=soon`, "wait"],
    ["a since that is not a time", `device_id=${DEVICE_ID}&since=yesterday`, "since"],
  ] as const
) {
  Deno.test(`${name} is 400 invalid_request naming ${path}, before any RPC`, async () => {
    const { handler, calls } = handlerFor(() => sqlQrState());
    const response = await handler(request(`${URL_BASE}?${query}`));
    assert.equal(response.status, 400);
    assertCommonHeaders(response);
    const error = await errorBody(response);
    assert.equal(error.code, "invalid_request");
    const issues = (error.details as { issues: { path: string }[] }).issues;
    assert.ok(issues.some((issue) => issue.path === path), JSON.stringify(issues));
    assert.equal(calls.length, 0);
  });
}

Deno.test("malformed JSON in a POST is 400 invalid_request", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  const response = await handler(
    request(URL_BASE, {
      method: "POST",
      body: "{device_id:",
      headers: { "content-type": "application/json" },
    }),
  );
  assert.equal(response.status, 400);
  assert.equal((await errorBody(response)).code, "invalid_request");
  assert.equal(calls.length, 0);
});

Deno.test("a JSON array body is 400, not a crash", async () => {
  const { handler } = handlerFor(() => sqlQrState());
  const response = await handler(request(URL_BASE, { method: "POST", json: [DEVICE_ID] }));
  assert.equal(response.status, 400);
  await response.body?.cancel();
});

Deno.test("a body over 16 KiB is 413 payload_too_large, declared or streamed", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  const big = JSON.stringify({ device_id: DEVICE_ID, pad: "x".repeat(17 * 1024) });
  const declared = await handler(request(URL_BASE, { method: "POST", body: big }));
  assert.equal(declared.status, 413);
  assert.equal((await errorBody(declared)).code, "payload_too_large");
  assertCommonHeaders(declared);

  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(big));
      controller.close();
    },
  });
  const streamed = await handler(
    new Request(URL_BASE, {
      method: "POST",
      body: stream,
      headers: { "content-type": "application/json" },
    }),
  );
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();
  assert.equal(calls.length, 0);
});

Deno.test("a body of exactly 16 KiB is accepted", async () => {
  const { handler } = handlerFor(() => sqlQrState());
  const base = JSON.stringify({ device_id: DEVICE_ID, pad: "" });
  const body = JSON.stringify({ device_id: DEVICE_ID, pad: "x".repeat(16 * 1024 - base.length) });
  assert.equal(body.length, 16 * 1024);
  const response = await handler(request(URL_BASE, { method: "POST", body }));
  assert.equal(response.status, 200);
  await response.body?.cancel();
});

// --- the one RPC and the JSON body ---------------------------------------------

Deno.test("GET without wait makes exactly one get_device_qr RPC with the device id", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 200);
  await response.body?.cancel();
  assert.deepEqual(calls.map((c) => [c.name, c.args]), [["get_device_qr", {
    p_device_id: DEVICE_ID,
  }]]);
});

Deno.test("POST {device_id} (what functions.invoke sends) reads the JSON body", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  const response = await handler(
    request(URL_BASE, { method: "POST", json: { device_id: DEVICE_ID } }),
  );
  assert.equal(response.status, 200);
  await response.body?.cancel();
  assert.equal(calls.length, 1);
});

Deno.test("json format maps the SQL result to the contract body with a PNG data URL", async () => {
  const { handler } = handlerFor(() => readyState("2@payload-for-json"));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=json`));
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  const body = await response.json();
  assert.deepEqual(Object.keys(body).sort(), [
    "device_id",
    "incident",
    "last_error_code",
    "pairing_code",
    "qr",
    "reason",
    "reassigned",
    "retry_after_ms",
    "server",
    "status",
  ]);
  assert.equal(body.status, "ready");
  assert.equal(body.qr.value, "2@payload-for-json");
  assert.equal(body.qr.updated_at, "2026-11-28T19:00:00.123456+00:00");
  assert.deepEqual(body.server, { id: "11111111-1111-4111-8111-111111111111", name: "railway-1" });
  assert.match(body.qr.image, /^data:image\/png;base64,/);
  const png = Uint8Array.from(atob(body.qr.image.split(",")[1]), (c) => c.charCodeAt(0));
  assert.equal(decodePng(png), "2@payload-for-json");
  assert.equal("epoch" in body, false, "internal fencing token stays inside");
});

Deno.test("a pending device with no live server is 200 pending with reason no_active_servers", async () => {
  const { handler } = handlerFor(() =>
    sqlQrState({ server: null, reason: "no_active_servers", retry_after_ms: 5000 })
  );
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(body.status, "pending");
  assert.equal(body.reason, "no_active_servers");
  assert.equal(body.qr, null);
  assert.equal(body.server, null);
});

Deno.test("a device a fleet incident holds names the incident", async () => {
  const incident = { code: "version_outdated", since: "2026-12-05T10:00:00+00:00" };
  const { handler } = handlerFor(() =>
    sqlQrState({ reason: "fleet_incident", retry_after_ms: 5000, incident })
  );
  const body = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json();
  assert.equal(body.reason, "fleet_incident");
  assert.deepEqual(body.incident, incident);
});

Deno.test("a reassignment done by the SQL call is reported as reassigned", async () => {
  const { handler } = handlerFor(() =>
    sqlQrState({ reassigned: true, reason: "reassigned_from_inactive_server" })
  );
  const body = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json();
  assert.equal(body.reassigned, true);
  assert.equal(body.reason, "reassigned_from_inactive_server");
});

// --- image formats ------------------------------------------------------------

Deno.test("format=png returns PNG bytes that decode back to the QR value", async () => {
  const { handler } = handlerFor(() => readyState("2@decode-me,abc,def"));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=png`));
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "image/png");
  assertCommonHeaders(response);
  assert.equal(decodePng(new Uint8Array(await response.arrayBuffer())), "2@decode-me,abc,def");
});

Deno.test("format=svg returns an SVG document", async () => {
  const { handler } = handlerFor(() => readyState("2@svg-value"));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=svg`));
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^image\/svg\+xml/);
  assertCommonHeaders(response);
  const svg = await response.text();
  assert.match(svg, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<\/svg>\s*$/);
});

Deno.test("format=png without a fresh QR is 202 JSON with Retry-After", async () => {
  const { handler } = handlerFor(() => sqlQrState({ retry_after_ms: 1500 }));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=png`));
  assert.equal(response.status, 202);
  assert.equal(response.headers.get("retry-after"), "2");
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  assert.equal((await response.json()).status, "pending");
});

Deno.test("format=svg for a connected device is 202 JSON (no QR to draw)", async () => {
  const { handler } = handlerFor(() =>
    sqlQrState({ status: "connected", reason: null, retry_after_ms: null })
  );
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=svg`));
  assert.equal(response.status, 202);
  assert.equal(response.headers.get("retry-after"), "2");
  assert.equal((await response.json()).status, "connected");
});

Deno.test("a legacy data:image/png value is served as those PNG bytes", async () => {
  const source = await new CachedQrImages().dataUrl("legacy-payload");
  const { handler } = handlerFor(() => readyState(source));
  const png = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=png`));
  const bytes = new Uint8Array(await png.arrayBuffer());
  assert.equal(btoa(String.fromCharCode(...bytes)), source.split(",")[1]);
  assert.equal(decodePng(bytes), "legacy-payload");

  const json = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json();
  assert.equal(json.qr.image, source, "the data URL is passed through, not re-encoded");

  const svg = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=svg`)))
    .text();
  assert.match(svg, /<image [^>]*href="data:image\/png;base64,/);
});

Deno.test("polling the same QR renders it once (cached by value)", async () => {
  const cache = new CachedQrImages();
  const { rpc } = scriptedRpc(() => readyState("2@cache-me"));
  const handler = createGetDeviceQrHandler({ authenticate: asUser(rpc), images: cache });
  for (let i = 0; i < 5; i++) {
    await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=png`))).arrayBuffer();
  }
  assert.equal(cache.stats.renders, 1);
});

Deno.test("polling the same QR as JSON encodes its data URL once", async () => {
  const cache = new CachedQrImages();
  const { rpc } = scriptedRpc(() => readyState("2@encode-me"));
  const handler = createGetDeviceQrHandler({ authenticate: asUser(rpc), images: cache });
  const images = new Set<string>();
  for (let i = 0; i < 5; i++) {
    images.add(
      (await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json()).qr.image,
    );
  }
  assert.equal(images.size, 1);
  assert.match([...images][0], /^data:image\/png;base64,/);
  assert.equal(cache.stats.renders, 1);
  assert.equal(cache.stats.encodes, 1);
});

// --- error mapping --------------------------------------------------------------

for (
  const [sqlMessage, pgCode, status, code] of [
    ["not_found", "PT404", 404, "not_found"],
    ["unauthorized", "PT401", 401, "unauthorized"],
    ["invalid_argument", "PT400", 400, "invalid_request"],
  ] as const
) {
  Deno.test(`SQL ${sqlMessage} maps to ${status} ${code}`, async () => {
    const { handler } = handlerFor(() => rpcError(status, { code: pgCode, message: sqlMessage }));
    const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
    assert.equal(response.status, status);
    assertCommonHeaders(response);
    assert.equal((await errorBody(response)).code, code);
  });
}

Deno.test("an unreachable database is 503 database_unavailable with Retry-After", async () => {
  const { handler } = handlerFor(() =>
    rpcError(0, { code: "", message: "TypeError: fetch failed" })
  );
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 503);
  assert.ok(Number(response.headers.get("retry-after")) >= 1);
  assertCommonHeaders(response);
  const error = await errorBody(response);
  assert.equal(error.code, "database_unavailable");
  assert.doesNotMatch(JSON.stringify(error), /fetch failed/);
});

Deno.test("a thrown bug is a bare 500 without its message or stack", async () => {
  const { handler } = handlerFor(() => {
    throw new Error("select secret from vault where token = 'sb_secret_abc'");
  });
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 500);
  assertCommonHeaders(response);
  const text = await response.text();
  assert.doesNotMatch(text, /select|sb_secret|vault|at /);
  assert.equal(JSON.parse(text).error.code, "internal_error");
});

Deno.test("a SQL result of an unexpected shape is a 500, not a malformed 200", async () => {
  const { handler } = handlerFor(() => ({ nope: true }));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 500);
  await response.body?.cancel();
});

Deno.test("ApiError carries its status from the one mapping table", () => {
  assert.equal(new ApiError("cooldown", "x").status, 429);
  assert.equal(new ApiError("no_active_servers", "x").status, 503);
  assert.equal(new ApiError("payload_too_large", "x").status, 413);
});

// --- long-poll ------------------------------------------------------------------

Deno.test("wait returns as soon as a QR is published, not before", async () => {
  const clock = new FakeClock();
  let published = false;
  clock.onSleep = (elapsed) => {
    if (elapsed >= 3000) published = true;
  };
  const { handler, calls } = handlerFor(() => (published ? readyState("2@new") : sqlQrState()), {
    clock,
  });
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25`));
  const body = await response.json();
  assert.equal(body.status, "ready");
  assert.equal(body.qr.value, "2@new");
  assert.ok(clock.elapsed >= 3000, `returned after ${clock.elapsed} ms, before the publish`);
  assert.ok(clock.elapsed < 3000 + 2000, `returned ${clock.elapsed} ms after start, too late`);
  assert.ok(calls.length > 2);
});

Deno.test("wait with nothing changing ends at the deadline with the current state", async () => {
  const clock = new FakeClock();
  const { handler, calls } = handlerFor(() => sqlQrState(), { clock });
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=10`));
  assert.equal((await response.json()).status, "pending");
  assert.equal(clock.elapsed, 10_000);
  assert.equal(calls.at(-1)!.at - calls[0].at, 10_000, "the last check happens at the deadline");
});

Deno.test("re-checks back off and never exceed the 2 s ceiling", async () => {
  const clock = new FakeClock();
  const { handler } = handlerFor(() => sqlQrState(), { clock });
  await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25`))).arrayBuffer();
  const gaps = clock.sleeps.slice(0, -1);
  for (let i = 1; i < gaps.length; i++) assert.ok(gaps[i] >= gaps[i - 1], `gaps ${gaps}`);
  assert.ok(Math.max(...clock.sleeps) <= 2000);
  assert.ok(clock.sleeps[0] < 500, "the first re-check comes quickly");
});

Deno.test("wait answers at once when the QR differs from since", async () => {
  const clock = new FakeClock();
  const { handler, calls } = handlerFor(() => readyState("2@b", "2026-11-28T19:00:20+00:00"), {
    clock,
  });
  const since = encodeURIComponent("2026-11-28T19:00:00+00:00");
  const response = await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25&since=${since}`),
  );
  assert.equal((await response.json()).qr.value, "2@b");
  assert.equal(calls.length, 1);
  assert.equal(clock.elapsed, 0);
});

Deno.test("wait holds while the QR is the one named by since, and returns on rotation", async () => {
  const clock = new FakeClock();
  const first = "2026-11-28T19:00:00.123456+00:00";
  clock.onSleep = () => {};
  const { handler } = handlerFor(
    () =>
      clock.elapsed >= 4000
        ? readyState("2@rotated", "2026-11-28T19:00:20+00:00")
        : readyState("2@first", first),
    { clock },
  );
  // The client echoes the timestamp in another notation: it still names the same QR.
  const since = encodeURIComponent("2026-11-28T19:00:00.123Z");
  const body = await (await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25&since=${since}`),
  )).json();
  assert.equal(body.qr.value, "2@rotated");
  assert.ok(clock.elapsed >= 4000);
});

Deno.test("wait returns when the status changes (a scan connects the device)", async () => {
  const clock = new FakeClock();
  const { handler } = handlerFor(
    () =>
      clock.elapsed >= 2000
        ? sqlQrState({ status: "connected", qr: null, reason: null })
        : readyState("2@scan-me", "2026-11-28T19:00:00+00:00"),
    { clock },
  );
  const since = encodeURIComponent("2026-11-28T19:00:00+00:00");
  const body = await (await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=20&since=${since}`),
  )).json();
  assert.equal(body.status, "connected");
  assert.ok(clock.elapsed >= 2000 && clock.elapsed < 4000, `elapsed ${clock.elapsed}`);
});

Deno.test("wait holds a reconnecting device and returns when the session is resumed", async () => {
  const clock = new FakeClock();
  const { handler } = handlerFor(
    () =>
      clock.elapsed >= 3000
        ? sqlQrState({ status: "connected", qr: null, reason: null, retry_after_ms: null })
        : sqlQrState({ status: "reconnecting", qr: null, reason: "session_failover" }),
    { clock },
  );
  const body = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=20`))).json();
  assert.equal(body.status, "connected");
  assert.ok(clock.elapsed >= 3000 && clock.elapsed < 5000, `elapsed ${clock.elapsed}`);
});

Deno.test("a reconnecting device is answered as reconnecting with its reason and retry hint", async () => {
  const { handler } = handlerFor(() =>
    sqlQrState({
      status: "reconnecting",
      qr: null,
      reason: "resuming_session",
      retry_after_ms: 1000,
    })
  );
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&format=png`));
  assert.equal(response.status, 202);
  assert.equal(response.headers.get("retry-after"), "1");
  const body = await response.json();
  assert.equal(body.status, "reconnecting");
  assert.equal(body.reason, "resuming_session");
  assert.equal(body.qr, null);
});

Deno.test("a status the contract does not know is a 500, not passed through", async () => {
  const { handler } = handlerFor(() => sqlQrState({ status: "linked" }));
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`));
  assert.equal(response.status, 500);
  await response.body?.cancel();
});

Deno.test("wait does not hold an idle device: not_connecting answers at once", async () => {
  const clock = new FakeClock();
  const { handler, calls } = handlerFor(
    () => sqlQrState({ status: "not_connecting", reason: "call_reassign_device", server: null }),
    { clock },
  );
  const body = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25`))).json();
  assert.equal(body.status, "not_connecting");
  assert.equal(calls.length, 1);
  assert.equal(clock.elapsed, 0);
});

Deno.test("a client that goes away ends the wait: no re-check after it left, only its lease ended", async () => {
  const clock = new FakeClock();
  const controller = new AbortController();
  let abortedAt: number | null = null;
  clock.onSleep = () => {
    if (clock.elapsed >= 1000 && abortedAt === null) {
      abortedAt = clock.time;
      controller.abort();
    }
  };
  const { handler, calls } = handlerFor(() => sqlQrState(), { clock });
  await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25`, { signal: controller.signal }),
  );
  assert.ok(abortedAt !== null);
  assert.ok(clock.elapsed < 3000, `kept waiting ${clock.elapsed} ms after the client left`);
  const after = calls.filter((c) => c.at >= abortedAt!);
  assert.deepEqual(
    after.map((c) => c.name),
    ["end_long_poll"],
    "a re-check ran after the client left",
  );
});

Deno.test("a long-poll's re-checks name it, and it ends its lease when it answers", async () => {
  const clock = new FakeClock();
  const { handler, calls } = handlerFor(() => sqlQrState(), { clock });
  await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=3`))).arrayBuffer();
  const [first, ...rest] = calls;
  assert.deepEqual(first.args, { p_device_id: DEVICE_ID }, "the first check holds no lease");
  const rechecks = rest.filter((c) => c.name === "get_device_qr");
  assert.ok(rechecks.length > 1);
  const waitId = rechecks[0].args.p_wait_id;
  assert.match(String(waitId), /^[0-9a-f-]{36}$/);
  assert.ok(rechecks.every((c) => c.args.p_wait_id === waitId), "one id for the whole poll");
  assert.deepEqual(calls.at(-1), {
    name: "end_long_poll",
    args: { p_wait_id: waitId },
    at: clock.now(),
  });
});

Deno.test("a request that does not wait makes one RPC and holds no lease", async () => {
  const { handler, calls } = handlerFor(() => sqlQrState());
  await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).arrayBuffer();
  assert.deepEqual(calls.map((c) => [c.name, c.args]), [["get_device_qr", {
    p_device_id: DEVICE_ID,
  }]]);
});

Deno.test("POST accepts wait as a JSON number", async () => {
  const clock = new FakeClock();
  const { handler } = handlerFor(() => sqlQrState(), { clock });
  await (await handler(
    request(URL_BASE, { method: "POST", json: { device_id: DEVICE_ID, wait: 3 } }),
  )).arrayBuffer();
  assert.equal(clock.elapsed, 3000);
});

Deno.test("an RPC failure during a wait is answered as that error", async () => {
  const clock = new FakeClock();
  const { handler } = handlerFor(
    (_n, _a, i) => i === 0 ? sqlQrState() : rpcError(503, { code: "PGRST001", message: "x" }),
    { clock },
  );
  const response = await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=5`));
  assert.equal(response.status, 503);
  assert.equal((await errorBody(response)).code, "database_unavailable");
});

// --- linking by phone number --------------------------------------------------------

const CODE = { code: "ABCD1234", expires_at: "2026-11-28T19:03:00+00:00" };

function pairingHandler(
  answerState: (getCallIndex: number) => unknown,
  options: { clock?: FakeClock } = {},
) {
  let reads = 0;
  return handlerFor((name) => {
    if (name === "request_pairing_code") {
      return { device_id: DEVICE_ID, requested_at: "x", expires_at: "y", epoch: 3 };
    }
    return answerState(reads++);
  }, options);
}

Deno.test("POST {device_id, pairing_phone} asks for a code with the E.164 number, then reads the state", async () => {
  const { handler, calls } = pairingHandler(() => sqlQrState());
  const response = await handler(request(URL_BASE, {
    method: "POST",
    json: { device_id: DEVICE_ID, pairing_phone: "+1 (415) 555-0123" },
  }));
  assert.equal(response.status, 200);
  assertCommonHeaders(response);
  assert.deepEqual(calls.map((c) => [c.name, c.args]), [
    ["request_pairing_code", { p_device_id: DEVICE_ID, p_phone: "+14155550123" }],
    ["get_device_qr", { p_device_id: DEVICE_ID }],
  ]);
  const body = await response.json();
  assert.equal(body.status, "pending");
  assert.equal(body.pairing_code, null);
});

Deno.test("the JSON body carries the pairing code the SQL serves", async () => {
  const { handler } = handlerFor(() => readyState("2@qr", undefined));
  const plain = await (await handler(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json();
  assert.equal(plain.pairing_code, null);
  const withCode = handlerFor(() => sqlQrState({ pairing_code: CODE })).handler;
  const body = await (await withCode(request(`${URL_BASE}?device_id=${DEVICE_ID}`))).json();
  assert.deepEqual(body.pairing_code, CODE);
});

Deno.test("a pairing request with wait holds through QR rotations until the code is there", async () => {
  const clock = new FakeClock();
  const { handler, calls } = pairingHandler((i) => {
    const state = readyState(`2@qr-${i}`, `2026-11-28T19:00:0${i}+00:00`);
    return i < 3 ? state : { ...state, pairing_code: CODE };
  }, { clock });
  const body = await (await handler(request(URL_BASE, {
    method: "POST",
    json: { device_id: DEVICE_ID, pairing_phone: "+14155550123", wait: 25 },
  }))).json();
  assert.deepEqual(body.pairing_code, CODE);
  assert.equal(calls.filter((c) => c.name === "get_device_qr").length, 4);
  assert.equal(calls.filter((c) => c.name === "request_pairing_code").length, 1);
});

Deno.test("a plain long-poll ends when a pairing code appears", async () => {
  const clock = new FakeClock();
  const updatedAt = "2026-11-28T19:00:00.123456+00:00";
  const { handler } = handlerFor(
    () =>
      clock.elapsed >= 3000
        ? { ...readyState("2@same", updatedAt), pairing_code: CODE }
        : readyState("2@same", updatedAt),
    { clock },
  );
  const since = encodeURIComponent(updatedAt);
  const body = await (await handler(
    request(`${URL_BASE}?device_id=${DEVICE_ID}&wait=25&since=${since}`),
  )).json();
  assert.deepEqual(body.pairing_code, CODE);
  assert.ok(clock.elapsed >= 3000 && clock.elapsed < 25_000);
});

for (
  const [name, phone] of [
    ["a number without its country code", "2025550143"],
    ["a number in no country's valid range", "+1 555 0000"],
    ["letters", "+1 CALL-NOW"],
    ["a non-string", 14155550123],
  ] as const
) {
  Deno.test(`pairing_phone as ${name} is 400 invalid_request, before any RPC, not echoed`, async () => {
    const { handler, calls } = pairingHandler(() => sqlQrState());
    const response = await handler(request(URL_BASE, {
      method: "POST",
      json: { device_id: DEVICE_ID, pairing_phone: phone },
    }));
    assert.equal(response.status, 400);
    assertCommonHeaders(response);
    const text = await response.text();
    assert.equal(JSON.parse(text).error.code, "invalid_request");
    assert.match(JSON.parse(text).error.message, /^pairing_phone: /);
    assert.equal(text.includes(String(phone)), false, "the number is not echoed");
    assert.equal(calls.length, 0);
  });
}

Deno.test("pairing_phone in the URL is refused, even with a POST", async () => {
  for (const method of ["GET", "POST"]) {
    const { handler, calls } = pairingHandler(() => sqlQrState());
    const response = await handler(request(
      `${URL_BASE}?device_id=${DEVICE_ID}&pairing_phone=%2B14155550123`,
      method === "POST" ? { method, json: {} } : { method },
    ));
    assert.equal(response.status, 400, method);
    assert.equal((await errorBody(response)).code, "invalid_request");
    assert.equal(calls.length, 0);
  }
});

for (
  const [sqlMessage, code, retryAfterMs, seconds] of [
    ["cooldown", "cooldown", 41_200, "42"],
    ["rate_limited", "rate_limited", 1_800_000, "1800"],
  ] as const
) {
  Deno.test(`a pairing request refused with ${sqlMessage} is 429 ${code} with Retry-After and CORS`, async () => {
    const { handler, calls } = handlerFor((name) =>
      name === "request_pairing_code"
        ? rpcError(429, {
          code: "PT429",
          message: sqlMessage,
          details: JSON.stringify({ retry_after_ms: retryAfterMs }),
        })
        : sqlQrState()
    );
    const response = await handler(request(URL_BASE, {
      method: "POST",
      json: { device_id: DEVICE_ID, pairing_phone: "+1 415 555 0199" },
    }));
    assert.equal(response.status, 429);
    assertCommonHeaders(response);
    assert.equal(response.headers.get("retry-after"), seconds);
    const error = await errorBody(response);
    assert.equal(error.code, code);
    assert.deepEqual(error.details, { retry_after_ms: retryAfterMs });
    assert.deepEqual(calls.map((c) => c.name), ["request_pairing_code"]);
  });
}
