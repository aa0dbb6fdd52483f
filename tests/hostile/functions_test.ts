/**
 * Hostile requests to both edge functions, table-driven: broken and oversized
 * bodies, wrong types, non-UUIDs, SQL-looking and control-character strings,
 * wrong methods and content types, forged and stolen credentials. Each answer
 * must be a listed 4xx (or a contract 503) JSON error with CORS, leak nothing,
 * and the world's rows must be unchanged afterwards.
 */
import assert from "node:assert/strict";
import {
  assertHostileAnswer,
  callFunction,
  dropWorld,
  type FnRequest,
  forgedTokens,
  type FunctionName,
  inParallel,
  NASTY_STRINGS,
  NIL_UUID,
  world,
  worldChecksum,
} from "./kit.ts";
import { writeFigures } from "./figures.ts";
import { createUser, mintAccessToken, sql } from "../e2e/harness.ts";

interface Case {
  name: string;
  fn: FunctionName;
  request: FnRequest;
  statuses: number[];
  code?: string;
  secrets?: string[];
}

const BOTH: FunctionName[] = ["get-device-qr", "reassign-device"];

/** JSON values of the wrong type for any field. */
const WRONG_TYPES: unknown[] = [
  null,
  true,
  0,
  -1,
  1e308,
  12345678901234567890,
  [],
  [NIL_UUID],
  {},
  { $ne: null },
  { device_id: NIL_UUID },
];

function nested(depth: number): string {
  return "[".repeat(depth) + "]".repeat(depth);
}

async function cases(): Promise<Case[]> {
  const w = await world();
  const own = w.mallory.deviceId;
  const victim = w.alice.deviceId;
  const list: Case[] = [];
  const add = (c: Case) => list.push(c);

  for (const fn of BOTH) {
    const post = (json: unknown): FnRequest => ({ token: w.mallory.token, json });

    // Broken JSON, and JSON that is not an object.
    const valid = JSON.stringify({ device_id: own });
    for (let cut = 1; cut < valid.length; cut += 5) {
      add({
        name: `${fn}: JSON truncated at ${cut}`,
        fn,
        request: { token: w.mallory.token, body: valid.slice(0, cut) },
        statuses: [400],
        code: "invalid_request",
      });
    }
    for (
      const body of [
        "{",
        "}",
        "{'device_id': 1}",
        '{"device_id": undefined}',
        "NaN",
        "[]",
        "null",
        "1",
        '"a string"',
        "true",
        '{"device_id":"x"}garbage',
        "\u0000",
        "\ufeff{}",
        '{"a":1,}',
      ]
    ) {
      add({
        name: `${fn}: body ${JSON.stringify(body)}`,
        fn,
        request: { token: w.mallory.token, body },
        statuses: [400],
        code: "invalid_request",
      });
    }

    // Wrong types and hostile strings for the device id.
    for (const value of [...WRONG_TYPES, ...NASTY_STRINGS]) {
      add({
        name: `${fn}: device_id ${JSON.stringify(value).slice(0, 40)}`,
        fn,
        request: post({ device_id: value }),
        statuses: [400],
        code: "invalid_request",
      });
    }
    add({
      name: `${fn}: device_id missing`,
      fn,
      request: post({}),
      statuses: [400],
    });
    add({
      name: `${fn}: the nil UUID is nobody's device`,
      fn,
      request: post({ device_id: NIL_UUID }),
      statuses: [404],
      code: "not_found",
    });
    add({
      name: `${fn}: a random UUID is nobody's device`,
      fn,
      request: post({ device_id: crypto.randomUUID() }),
      statuses: [404],
      code: "not_found",
    });
    add({
      name: `${fn}: another user's device is not found`,
      fn,
      request: post({ device_id: victim }),
      statuses: [404],
      code: "not_found",
    });
    add({
      name: `${fn}: another user's device in uppercase is not found`,
      fn,
      request: post({ device_id: victim.toUpperCase() }),
      statuses: [404],
      code: "not_found",
    });
    add({
      name: `${fn}: a deleted user's device, asked by another user`,
      fn,
      request: post({ device_id: w.ghost.deviceId }),
      statuses: [404],
      code: "not_found",
    });
    add({
      name: `${fn}: prototype keys do not smuggle fields`,
      fn,
      request: {
        token: w.mallory.token,
        body: `{"__proto__": {"device_id": "${victim}", "scope": "all_connecting"}, ` +
          `"constructor": {"prototype": {"scope": "all_connecting"}}}`,
      },
      statuses: [400],
    });
    add({
      name: `${fn}: a duplicated key cannot swap in another user's device`,
      fn,
      request: {
        token: w.mallory.token,
        body: `{"device_id": "${own}", "device_id": "${victim}"}`,
      },
      statuses: [404],
    });

    // Size and depth.
    const padding = "x".repeat(17 * 1024);
    add({
      name: `${fn}: a 17 KiB body is 413`,
      fn,
      request: post({ device_id: own, padding }),
      statuses: [413],
      code: "payload_too_large",
    });
    add({
      name: `${fn}: a 1 MiB body is 413`,
      fn,
      request: post({ device_id: own, padding: "y".repeat(1024 * 1024) }),
      statuses: [413],
      code: "payload_too_large",
    });
    add({
      name: `${fn}: a 17 KiB body streamed without Content-Length is 413`,
      fn,
      request: {
        token: w.mallory.token,
        body: ReadableStream.from([
          new TextEncoder().encode(`{"device_id": "${own}", "padding": "`),
          new TextEncoder().encode(padding),
          new TextEncoder().encode('"}'),
        ]),
      },
      statuses: [413],
      code: "payload_too_large",
    });
    add({
      name: `${fn}: a 6000-deep nested array`,
      fn,
      request: { token: w.mallory.token, body: `{"device_id": ${nested(6000)}}` },
      statuses: [400],
    });
    add({
      name: `${fn}: a 100000-deep nested array`,
      fn,
      request: { token: w.mallory.token, body: `{"device_id": ${nested(100_000)}}` },
      statuses: [413],
    });
    add({
      name: `${fn}: 2000 keys`,
      fn,
      request: post(Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, i]))),
      statuses: [400, 413],
    });

    // Content types: the body is read as JSON whatever the header says.
    add({
      name: `${fn}: a form-encoded body`,
      fn,
      request: {
        token: w.mallory.token,
        body: `device_id=${victim}`,
        contentType: "application/x-www-form-urlencoded",
      },
      statuses: [400],
      code: "invalid_request",
    });
    add({
      name: `${fn}: a multipart body`,
      fn,
      request: {
        token: w.mallory.token,
        body: (() => {
          const form = new FormData();
          form.set("device_id", victim);
          return form;
        })(),
        contentType: null,
      },
      statuses: [400],
    });
    add({
      name: `${fn}: binary bytes`,
      fn,
      request: {
        token: w.mallory.token,
        body: new Uint8Array([0xff, 0xfe, 0x00, 0x7b, 0x80, 0xc3, 0x28]),
        contentType: "application/octet-stream",
      },
      statuses: [400],
    });
    add({
      name: `${fn}: another user's device as text/plain JSON`,
      fn,
      request: {
        token: w.mallory.token,
        body: JSON.stringify({ device_id: victim }),
        contentType: "text/plain",
      },
      statuses: [404],
    });

    // Methods.
    for (const method of ["PUT", "PATCH", "DELETE"]) {
      add({
        name: `${fn}: ${method} is 405`,
        fn,
        request: { method, token: w.mallory.token, json: { device_id: own } },
        statuses: [405],
        code: "method_not_allowed",
      });
    }
    add({
      name: `${fn}: an unknown method`,
      fn,
      request: { method: "PROPFIND", token: w.mallory.token },
      statuses: [405],
    });

    // Credentials.
    for (const [what, token] of await forgedTokens(w)) {
      add({
        name: `${fn}: ${what} is refused`,
        fn,
        request: { token, json: { device_id: victim } },
        statuses: [401],
        code: "unauthorized",
        secrets: [token],
      });
    }
    add({
      name: `${fn}: no credentials at all`,
      fn,
      request: { apikey: null, json: { device_id: victim } },
      statuses: [401],
      code: "unauthorized",
    });
    add({
      name: `${fn}: only the publishable key (no user)`,
      fn,
      request: { json: { device_id: victim } },
      statuses: [401],
      code: "unauthorized",
    });
    for (
      const authorization of [
        "Bearer",
        "Bearer ",
        `Basic ${btoa("alice:password")}`,
        `Bearer ${w.mallory.token} extra`,
        `bearer${w.mallory.token}`,
        `Token ${w.mallory.token}`,
        `Bearer ${"A".repeat(8000)}`,
      ]
    ) {
      add({
        name: `${fn}: Authorization ${JSON.stringify(authorization.slice(0, 24))}…`,
        fn,
        request: { authorization, json: { device_id: victim } },
        statuses: [401],
        code: "unauthorized",
      });
    }
    add({
      name: `${fn}: a deleted user's token on their own (gone) device`,
      fn,
      request: { token: w.ghost.token, json: { device_id: w.ghost.deviceId } },
      statuses: [401, 404],
      secrets: [w.ghost.token],
    });
    add({
      name: `${fn}: a deleted user's token on another user's device`,
      fn,
      request: { token: w.ghost.token, json: { device_id: victim } },
      statuses: [401, 404],
      secrets: [w.ghost.token],
    });
    add({
      name: `${fn}: a user token sent as the apikey only`,
      fn,
      request: { apikey: w.mallory.token, json: { device_id: victim } },
      statuses: [401, 404],
    });
  }

  // get-device-qr: the query string.
  for (const value of NASTY_STRINGS.slice(0, 20)) {
    add({
      name: `get-device-qr: GET device_id=${JSON.stringify(value).slice(0, 30)}`,
      fn: "get-device-qr",
      request: { token: w.mallory.token, query: `device_id=${encodeURIComponent(value)}` },
      statuses: [400],
      code: "invalid_request",
    });
  }
  const qrFields: [string, unknown[]][] = [
    ["format", ["PNG", "jpeg", "json ", "../png", "", 1, null, ["png"], { a: 1 }, "svg\u0000"]],
    ["wait", [-1, 26, 1e308, "abc", "Infinity", "-0.5", "1e9", true, [], {}]],
    ["since", ["yesterday", "2026-13-45T99:99:99Z", 123, "' OR 1=1 --", [], {}, "\u0000"]],
  ];
  for (const [field, values] of qrFields) {
    for (const value of values) {
      add({
        name: `get-device-qr: ${field} ${JSON.stringify(value)}`,
        fn: "get-device-qr",
        request: { token: w.mallory.token, json: { device_id: victim, [field]: value } },
        statuses: [400],
        code: "invalid_request",
      });
    }
  }
  add({
    name: "get-device-qr: two device_id parameters, own then another user's",
    fn: "get-device-qr",
    request: { token: w.mallory.token, query: `device_id=${own}&device_id=${victim}` },
    statuses: [404],
  });
  add({
    name: "get-device-qr: body device_id wins over a query that names another user's",
    fn: "get-device-qr",
    request: {
      token: w.mallory.token,
      query: `device_id=${own}`,
      json: { device_id: victim },
    },
    statuses: [404],
  });
  add({
    name: "get-device-qr: a very long query string",
    fn: "get-device-qr",
    request: { token: w.mallory.token, query: `device_id=${own}&x=${"q".repeat(20_000)}` },
    statuses: [400, 413, 414, 431, 200],
  });
  add({
    name: "get-device-qr: an operator key is no user",
    fn: "get-device-qr",
    request: { token: w.stack.secretKey, json: { device_id: victim } },
    statuses: [401, 403],
  });
  add({
    name: "get-device-qr: the legacy service-role key is no user",
    fn: "get-device-qr",
    request: { token: w.stack.serviceRoleKey, json: { device_id: victim } },
    statuses: [401, 403],
  });
  add({
    name: "get-device-qr: the secret key as apikey with no user",
    fn: "get-device-qr",
    request: { apikey: w.stack.secretKey, json: { device_id: victim } },
    statuses: [401, 403],
  });

  // reassign-device: operator-only fields from users and from nobody.
  const scopes = ["inactive", "all_connecting", "device", "health", "' OR 1=1", "", 1, null];
  for (const scope of scopes) {
    add({
      name: `reassign-device: a user token with scope ${JSON.stringify(scope)}`,
      fn: "reassign-device",
      request: { token: w.mallory.token, json: { scope, device_id: victim } },
      statuses: [403],
      code: "forbidden",
    });
    add({
      name: `reassign-device: the publishable key with scope ${JSON.stringify(scope)}`,
      fn: "reassign-device",
      request: { json: { scope } },
      statuses: [401],
      code: "unauthorized",
    });
  }
  add({
    name: "reassign-device: a user token with dry_run",
    fn: "reassign-device",
    request: { token: w.mallory.token, json: { device_id: own, dry_run: true } },
    statuses: [403],
    code: "forbidden",
  });
  add({
    name: "reassign-device: a user's own connected device is 409",
    fn: "reassign-device",
    request: { token: w.mallory.token, json: { device_id: own } },
    statuses: [409],
    code: "already_connected",
  });
  add({
    name: "reassign-device: the legacy anon key with an operator scope",
    fn: "reassign-device",
    request: { token: w.stack.anonKey, json: { scope: "all_connecting", dry_run: true } },
    statuses: [401],
  });
  // Operators with hostile arguments: every case here is refused, so nothing moves.
  const operator = (json: unknown): FnRequest => ({
    token: w.stack.secretKey,
    apikey: w.stack.secretKey,
    json,
  });
  for (const scope of ["INACTIVE", "all", "' OR 1=1 --", "", "device ", 1, null, [], {}]) {
    add({
      name: `reassign-device: operator scope ${JSON.stringify(scope)}`,
      fn: "reassign-device",
      request: operator({ scope, dry_run: true }),
      statuses: [400],
      code: "invalid_request",
    });
  }
  for (const dryRun of ["true", 1, "yes", null, [], {}]) {
    add({
      name: `reassign-device: operator dry_run ${JSON.stringify(dryRun)}`,
      fn: "reassign-device",
      request: operator({ scope: "all_connecting", dry_run: dryRun }),
      statuses: [400],
      code: "invalid_request",
    });
  }
  for (const value of [...NASTY_STRINGS.slice(0, 12), 1, [], {}]) {
    add({
      name: `reassign-device: operator device_id ${JSON.stringify(value).slice(0, 30)}`,
      fn: "reassign-device",
      request: operator({ scope: "device", device_id: value }),
      statuses: [400],
      code: "invalid_request",
    });
  }
  add({
    name: "reassign-device: operator device scope without an id",
    fn: "reassign-device",
    request: operator({ scope: "device" }),
    statuses: [400],
  });
  add({
    name: "reassign-device: operator bulk scope with a device id",
    fn: "reassign-device",
    request: operator({ scope: "inactive", device_id: victim, dry_run: true }),
    statuses: [400],
  });
  add({
    name: "reassign-device: operator on an unknown device",
    fn: "reassign-device",
    request: operator({ scope: "device", device_id: crypto.randomUUID() }),
    statuses: [404],
    code: "not_found",
  });
  add({
    name: "reassign-device: operator on a connected device is 409",
    fn: "reassign-device",
    request: operator({ scope: "device", device_id: victim }),
    statuses: [409],
    code: "already_connected",
  });
  return list;
}

Deno.test({
  name:
    "hostile requests to both functions are 4xx JSON errors that leak nothing and change nothing",
  fn: async (t) => {
    try {
      const w = await world();
      const before = await worldChecksum(w);
      const all = await cases();
      await t.step(`${all.length} table cases`, async () => {
        await inParallel(all, 8, async (c) => {
          const answer = await callFunction(c.fn, c.request);
          await assertHostileAnswer(answer, c, c.name);
        });
      });
      assert.equal(await worldChecksum(w), before, "the world's rows changed");
    } finally {
      await writeFigures("functions");
      await dropWorld();
    }
  },
});

Deno.test({
  name: "a burst of 400 concurrent hostile requests is answered, every one a 4xx",
  fn: async () => {
    try {
      const w = await world();
      const before = await worldChecksum(w);
      const sample = (await cases()).filter((c) => !(c.request.body instanceof ReadableStream));
      const burst = Array.from({ length: 400 }, (_, i) => sample[(i * 7) % sample.length]);
      await inParallel(burst, 64, async (c) => {
        const answer = await callFunction(c.fn, c.request);
        await assertHostileAnswer(answer, c, `burst: ${c.name}`);
      });
      assert.equal(await worldChecksum(w), before, "the world's rows changed");
    } finally {
      await writeFigures("functions");
      await dropWorld();
    }
  },
});

Deno.test({
  name: "a victim's own request still works after the hostile run (the check can tell)",
  fn: async () => {
    try {
      const w = await world();
      const answer = await callFunction("get-device-qr", {
        token: w.alice.token,
        query: `device_id=${w.alice.deviceId}`,
      });
      assert.equal(answer.status, 200, answer.text);
      const body = JSON.parse(answer.text);
      assert.equal(body.status, "connected");
      // The checksum sees a change to any of the world's rows.
      const before = await worldChecksum(w);
      const db = await sql();
      await db`update public.devices set updated_at = updated_at + interval '1 microsecond'
               where id = ${w.alice.deviceId}`;
      assert.notEqual(await worldChecksum(w), before, "the checksum missed a change");
      // Alice's own data comes back to Alice: the leak check would flag it for anyone else.
      await assert.rejects(
        () => assertHostileAnswer(answer, { statuses: [200] }, "alice reads her device"),
        /leaks/,
      );
    } finally {
      await dropWorld();
    }
  },
});

Deno.test({
  name: "validly signed tokens that name no real user are refused or not found, never a 500",
  fn: async () => {
    try {
      const w = await world();
      const before = await worldChecksum(w);
      const signed: [string, string, number[]][] = [
        ["a user who never existed", await mintAccessToken(crypto.randomUUID()), [401, 404]],
        ["role anon with a user's sub", await mintAccessToken(w.mallory.id, { role: "anon" }), [
          401,
        ]],
        ["an empty sub", await mintAccessToken("", { claims: { sub: "" } }), [401]],
        [
          "a sub that is not a UUID (third-party auth ids look like this)",
          await mintAccessToken(
            "user_2NNEqL2nrIRdJ194ndJqAHwEfxC",
          ),
          [401],
        ],
        ["a SQL-looking sub", await mintAccessToken("'; delete from public.devices; --"), [401]],
      ];
      const failures: string[] = [];
      for (const [what, token, statuses] of signed) {
        for (const fn of BOTH) {
          const answer = await callFunction(fn, { token, json: { device_id: w.alice.deviceId } });
          try {
            await assertHostileAnswer(answer, { statuses, secrets: [token] }, `${fn}: ${what}`);
          } catch (error) {
            failures.push((error as Error).message);
          }
        }
      }
      assert.equal(await worldChecksum(w), before, "the world's rows changed");
      assert.deepEqual(failures, []);
    } finally {
      await dropWorld();
    }
  },
});

Deno.test({
  name:
    "the hostile-answer check rejects a 500, missing CORS, a leaked token, SQL text and a stack",
  fn: async () => {
    try {
      const w = await world();
      const cors = {
        "access-control-allow-origin": "*",
        "access-control-allow-headers": "authorization, x-client-info, apikey, content-type",
        "cache-control": "no-store",
        "content-type": "application/json",
      };
      const answer = (status: number, body: unknown, headers: Record<string, string> = cors) => ({
        status,
        headers: new Headers(headers),
        text: JSON.stringify(body),
      });
      const error = (message: string) => ({ error: { code: "invalid_request", message } });
      const bad: [string, ReturnType<typeof answer>, RegExp][] = [
        ["a 500", answer(500, error("boom")), /5xx/],
        ["an unlisted status", answer(404, error("nope")), /unexpected status/],
        ["no CORS", answer(400, error("x"), { "content-type": "application/json" }), /CORS/],
        ["a token", answer(400, error(`bad ${w.mallory.token}`)), /leaks/],
        ["the victim's data", answer(400, error(w.alice.secrets[2])), /leaks/],
        ["SQL text", answer(400, error("select * from public.devices where id = 1")), /SQL/],
        ["a stack", answer(400, error("at handler (file:///app/index.ts:3:9)")), /stack|path/],
        ["a bare body", answer(400, { message: "no envelope" }), /error.code/],
        ["a 503 outside the contract", answer(503, error("down")), /503/],
      ];
      for (const [what, sample, pattern] of bad) {
        await assert.rejects(
          () => assertHostileAnswer(sample, { statuses: [400, 500, 503] }, what),
          pattern,
          what,
        );
      }
      await assertHostileAnswer(answer(400, error("fine")), { statuses: [400] }, "a clean 400");
    } finally {
      await dropWorld();
    }
  },
});

/**
 * A user of their own with one device pairing on a live server of its own
 * (room to spare, its lease a day ahead, no QR yet: `pending`, which a
 * long-poll waits on), removed afterwards. Audit rows stay: the trail is append-only.
 */
async function pairingUser(tag: string) {
  const db = await sql();
  const user = await createUser(`${tag}-${crypto.randomUUID().slice(0, 8)}@example.test`);
  const [server] = await db`
    insert into public.backend_servers (server_name, is_active, is_healthy, current_load,
                                        max_capacity, last_health_ping)
    values (${`${tag}-server-${crypto.randomUUID()}`}, true, true, 1, 1000, now() + interval '1 day')
    returning id`;
  const [device] = await db`
    insert into public.devices (user_id, device_name, status, assigned_server_id, assignment_epoch,
                                assigned_at, connecting_since)
    values (${user.id}, 'pairing phone', 'connecting', ${server.id}, 1, now(), now())
    returning id`;
  return {
    deviceId: device.id as string,
    token: await mintAccessToken(user.id),
    drop: async () => {
      await db`delete from auth.users where id = ${user.id}`;
      await db`delete from public.backend_servers where id = ${server.id}`;
    },
  };
}

Deno.test({
  name:
    "a user's sixth concurrent long-poll is 429 with Retry-After; polls that ended free their slots",
  fn: async () => {
    await world();
    const u = await pairingUser("long-polls");
    try {
      const poll = () =>
        callFunction("get-device-qr", {
          token: u.token,
          query: `device_id=${u.deviceId}&wait=3`,
        });
      const answers = await Promise.all(Array.from({ length: 6 }, poll));
      const refused = answers.filter((a) => a.status === 429);
      assert.equal(refused.length, 1, answers.map((a) => a.status).join(" "));
      await assertHostileAnswer(
        refused[0],
        { statuses: [429], code: "too_many_long_polls" },
        "6th",
      );
      const retryAfter = Number(refused[0].headers.get("retry-after"));
      assert.ok(retryAfter >= 1 && retryAfter <= 5, `Retry-After ${retryAfter}`);
      for (const a of answers.filter((a) => a.status !== 429)) {
        assert.equal(a.status, 200, a.text);
        assert.equal(JSON.parse(a.text).status, "pending");
      }
      // Each poll ended its lease when it answered (left to lapse, they would
      // refuse these for up to 5 s).
      const again = await Promise.all(Array.from({ length: 5 }, poll));
      assert.deepEqual(again.map((a) => a.status), [200, 200, 200, 200, 200]);
    } finally {
      await u.drop();
      await dropWorld();
    }
  },
});

Deno.test({
  name: "a device's 11th reassignment within the hour is 429 with Retry-After, whatever reset it",
  fn: async () => {
    await world();
    const u = await pairingUser("budget");
    try {
      // Nine requests of the last hour, in the trail they are counted from (at the
      // default 15 s cooldown, making them here would take minutes).
      const db = await sql();
      await db`
        insert into public.device_assignment_events (device_id, epoch, reason, actor, caller, created_at)
        select ${u.deviceId}, n, 'user_request', 'test', 'test', now() - interval '59 minutes' + n * interval '1 second'
        from generate_series(1, 9) n`;
      const reassign = () =>
        callFunction("reassign-device", { token: u.token, json: { device_id: u.deviceId } });
      const tenth = await reassign();
      assert.equal(tenth.status, 200, tenth.text);
      const eleventh = await reassign();
      await assertHostileAnswer(
        eleventh,
        { statuses: [429], code: "reassignment_budget_exhausted" },
        "11th reassignment",
      );
      const retryAfter = Number(eleventh.headers.get("retry-after"));
      assert.ok(retryAfter >= 50 && retryAfter <= 70, `Retry-After ${retryAfter}`);
    } finally {
      await u.drop();
      await dropWorld();
    }
  },
});
