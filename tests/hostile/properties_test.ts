/**
 * Property-based hostile input (fast-check): whatever body, query string or
 * credential an attacker makes up, both functions answer a 4xx JSON error with
 * CORS that leaks nothing, and the world's rows do not change. Runs are
 * seeded per run and bounded, so the whole file stays within a few seconds;
 * a failure prints fast-check's seed and shrunk counterexample.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  assertHostileAnswer,
  callFunction,
  dropWorld,
  type FunctionName,
  type World,
  world,
  worldChecksum,
} from "./kit.ts";
import { writeFigures } from "./figures.ts";

const RUNS = Number(Deno.env.get("HOSTILE_RUNS") ?? 100);
const FUNCTIONS: FunctionName[] = ["get-device-qr", "reassign-device"];

/** A device id an attacker would try: nobody's, the victim's, a deleted user's, or junk. */
function deviceIdArb(w: World): fc.Arbitrary<unknown> {
  return fc.oneof(
    fc.uuid(),
    fc.constant(w.alice.deviceId),
    fc.constant(w.alice.deviceId.toUpperCase()),
    fc.constant(w.ghost.deviceId),
    fc.string({ unit: "binary", maxLength: 60 }),
    fc.jsonValue({ maxDepth: 3 }),
  );
}

/** Any JSON object a client could send, with the fields the functions read mixed in. */
function bodyArb(w: World): fc.Arbitrary<Record<string, unknown>> {
  return fc.record(
    {
      device_id: deviceIdArb(w),
      format: fc.oneof(fc.constantFrom("json", "png", "svg"), fc.jsonValue({ maxDepth: 2 })),
      wait: fc.oneof(fc.double(), fc.integer(), fc.string({ maxLength: 10 })),
      since: fc.oneof(
        fc.date().map((d) => (isNaN(d.getTime()) ? "x" : d.toISOString())),
        fc.string(),
      ),
      extra: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 3 })),
    },
    { requiredKeys: [] },
  ).map(({ extra, ...fields }) => ({ ...extra, ...fields }));
}

/** What an answer to a made-up request may be: never 200, since nothing made up names the caller's own device. */
const REFUSALS = [400, 401, 403, 404, 405, 413];

function property<T>(
  name: string,
  arb: (w: World) => fc.Arbitrary<T>,
  run: (w: World, value: T) => Promise<void>,
): void {
  Deno.test({
    name,
    fn: async () => {
      try {
        const w = await world();
        const before = await worldChecksum(w);
        await fc.assert(fc.asyncProperty(arb(w), (value) => run(w, value)), {
          numRuns: RUNS,
          endOnFailure: true,
        });
        assert.equal(await worldChecksum(w), before, "the world's rows changed");
      } finally {
        await writeFigures("properties");
        await dropWorld();
      }
    },
  });
}

property(
  "any JSON object posted by a user is refused or not found, and changes nothing",
  (w) => fc.tuple(fc.constantFrom(...FUNCTIONS), bodyArb(w)),
  async (w, [fn, body]) => {
    const answer = await callFunction(fn, { token: w.mallory.token, json: body });
    await assertHostileAnswer(answer, { statuses: REFUSALS }, `${fn} ${JSON.stringify(body)}`);
  },
);

property(
  "any byte string posted as the body is refused",
  () =>
    fc.tuple(
      fc.constantFrom(...FUNCTIONS),
      fc.oneof(
        fc.string({ unit: "binary", maxLength: 200 }),
        fc.uint8Array({ maxLength: 200 }),
        fc.json().map((json) => json.slice(0, Math.max(1, json.length - 1))),
      ),
      fc.constantFrom("application/json", "text/plain", "application/octet-stream", null),
    ),
  async (w, [fn, body, contentType]) => {
    const answer = await callFunction(fn, {
      token: w.mallory.token,
      body: body as BodyInit,
      contentType,
      method: "POST",
    });
    await assertHostileAnswer(answer, { statuses: REFUSALS }, `${fn} body ${String(body)}`);
  },
);

property(
  "any query string on get-device-qr is refused or not found",
  (w) =>
    fc.dictionary(
      fc.oneof(fc.constantFrom("device_id", "format", "wait", "since"), fc.string()),
      fc.oneof(
        deviceIdArb(w).map(String),
        fc.string({ unit: "binary", maxLength: 40 }),
        fc.constantFrom("png", "svg", "json", "25", "-1", "1e999", "0x10"),
      ),
      { maxKeys: 5 },
    ),
  async (w, params) => {
    // Waits are capped so a made-up `wait` on the victim's id cannot hold the run.
    const query = new URLSearchParams(params);
    const answer = await callFunction("get-device-qr", {
      token: w.mallory.token,
      query: query.toString(),
    });
    await assertHostileAnswer(answer, { statuses: REFUSALS }, `GET ?${query}`);
  },
);

property(
  "any made-up credential is 401",
  () =>
    fc.tuple(
      fc.constantFrom(...FUNCTIONS),
      fc.oneof(
        // Three base64url segments of made-up JSON: the shape of a JWT, none of the trust.
        fc.tuple(fc.jsonValue(), fc.jsonValue(), fc.string({ maxLength: 40 })).map(
          ([header, payload, signature]) =>
            [header, payload].map((part) => btoa(JSON.stringify(part)).replace(/=+$/, "")).join(
              ".",
            ) +
            "." + btoa(signature).replace(/=+$/, ""),
        ),
        fc.record({
          alg: fc.constantFrom("none", "HS256", "ES256", "RS256", "HS512", "nOnE"),
          kid: fc.oneof(fc.string({ maxLength: 10 }), fc.constant(undefined)),
        }).map((header) =>
          `${btoa(JSON.stringify(header))}.${
            btoa(JSON.stringify({ sub: crypto.randomUUID(), role: "authenticated" }))
          }.`.replaceAll("=", "")
        ),
        fc.stringMatching(/^[\x21-\x7e]{1,200}$/),
      ),
      fc.boolean(),
    ),
  async (w, [fn, token, asApikey]) => {
    const answer = await callFunction(fn, {
      ...(asApikey ? { apikey: token } : { token }),
      json: { device_id: w.alice.deviceId },
    });
    await assertHostileAnswer(answer, { statuses: [401], secrets: [token] }, `${fn} ${token}`);
  },
);

property(
  "any operator-only field from a user token is forbidden",
  (w) =>
    fc.record({
      scope: fc.oneof(
        fc.constantFrom("device", "inactive", "all_connecting", "health"),
        fc.jsonValue({ maxDepth: 1 }).filter((v) => v !== undefined),
      ),
      dry_run: fc.oneof(fc.boolean(), fc.jsonValue({ maxDepth: 1 })),
      device_id: deviceIdArb(w),
    }, { requiredKeys: ["scope"] }),
  async (w, body) => {
    const answer = await callFunction("reassign-device", { token: w.mallory.token, json: body });
    // `scope: null` is still a field sent; JSON cannot carry `undefined`.
    await assertHostileAnswer(answer, { statuses: [403] }, `reassign ${JSON.stringify(body)}`);
  },
);

property(
  "an operator's malformed or dry-run bulk request moves nothing",
  (w) =>
    fc.oneof(
      fc.record({
        scope: fc.constantFrom("inactive", "all_connecting"),
        dry_run: fc.constant(true),
      }),
      fc.record({ scope: fc.constant("device"), device_id: fc.uuid(), dry_run: fc.boolean() }),
      fc.record({
        scope: fc.oneof(fc.string(), fc.jsonValue({ maxDepth: 1 })),
        device_id: deviceIdArb(w),
        dry_run: fc.jsonValue({ maxDepth: 1 }),
      }).filter((b) =>
        !["inactive", "all_connecting", "health", "device"].includes(b.scope as string)
      ),
    ),
  async (w, body) => {
    const answer = await callFunction("reassign-device", {
      token: w.stack.secretKey,
      apikey: w.stack.secretKey,
      json: body,
    });
    // A dry run is a 200 that only reports; everything else here is refused.
    await assertHostileAnswer(
      answer,
      { statuses: [200, 400, 404, 503] },
      `operator ${JSON.stringify(body)}`,
    );
    if (answer.status === 200) assert.equal(JSON.parse(answer.text).dry_run, true, answer.text);
  },
);
