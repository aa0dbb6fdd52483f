/**
 * Shared ground for the hostile-input suite: a small world of its own (a victim
 * with a device worth stealing, an attacker with a device of their own, a
 * deleted user, a server nobody may pick), a request helper that counts every
 * answer, the one assertion every hostile answer must pass, and a checksum of
 * the world's rows so a test can prove that nothing it sent changed anything.
 *
 * The world never touches rows of other tests: its devices are `connected` on
 * its own server (no pairing to restart, nothing for maintenance or claims to
 * pick up: a linked device fails over only when its server is not live), and
 * that server is live but full (never chosen for assignment), its lease
 * dated a day ahead so no maintenance pass marks it inactive meanwhile.
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import {
  closeStack,
  createUser,
  getStack,
  mintAccessToken,
  sql,
  type Stack,
  type TestUser,
} from "../e2e/harness.ts";

export type FunctionName = "get-device-qr" | "reassign-device";

export interface World {
  stack: Stack;
  tag: string;
  server: { id: string; name: string };
  /** The victim: their device has a secret name, a fresh QR and sits on the world's server. */
  alice: TestUser & { token: string; deviceId: string; secrets: string[] };
  /** The attacker: a valid user with one connected device of their own. */
  mallory: TestUser & { token: string; deviceId: string };
  /** A user deleted after their token was minted; their device went with them. */
  ghost: TestUser & { token: string; deviceId: string };
  userIds: string[];
}

let worldPromise: Promise<World> | null = null;

/** Builds the world once per test file; `dropWorld` removes it. */
export function world(): Promise<World> {
  worldPromise ??= buildWorld();
  return worldPromise;
}

async function buildWorld(): Promise<World> {
  const stack = await getStack();
  const db = await sql();
  const tag = `hostile-${crypto.randomUUID().slice(0, 8)}`;

  const [server] = await db`
    insert into public.backend_servers (server_name, is_active, is_healthy, current_load,
                                        max_capacity, last_health_ping)
    values (${`hostile-server-${crypto.randomUUID()}`}, true, true, 3, 3, now() + interval '1 day')
    returning id, server_name as name`;
  // The attacker's own devices sit on another server: the victim's server name is a secret.
  const [attackerServer] = await db`
    insert into public.backend_servers (server_name, is_active, is_healthy, current_load,
                                        max_capacity, last_health_ping)
    values (${`attacker-server-${tag}`}, true, true, 3, 3, now() + interval '1 day')
    returning id`;

  const alice = await createUser(`${tag}-alice@example.test`);
  const mallory = await createUser(`${tag}-mallory@example.test`);
  const ghost = await createUser(`${tag}-ghost@example.test`);
  const secretName = `alice-secret-name-${crypto.randomUUID()}`;
  const secretQr = `alice-secret-qr-${crypto.randomUUID()}`;
  const [aliceDevice] = await db`
    insert into public.devices (user_id, device_name, status, qr_code, qr_updated_at, qr_expires_at,
                                assigned_server_id, assignment_epoch, assigned_at, last_error)
    values (${alice.id}, ${secretName}, 'connected', ${secretQr}, now(), now() + interval '1 day',
            ${server.id}, 7, now(), 'alice-secret-error')
    returning id`;
  const [malloryDevice] = await db`
    insert into public.devices (user_id, device_name, status, assigned_server_id, assignment_epoch)
    values (${mallory.id}, 'mallory phone', 'connected', ${attackerServer.id}, 1)
    returning id`;
  const [ghostDevice] = await db`
    insert into public.devices (user_id, device_name, status, assigned_server_id, assignment_epoch)
    values (${ghost.id}, 'ghost phone', 'connected', ${attackerServer.id}, 1)
    returning id`;
  const ghostToken = await mintAccessToken(ghost.id);
  await db`delete from auth.users where id = ${ghost.id}`;

  return {
    stack,
    tag,
    server: { id: server.id, name: server.name },
    alice: {
      ...alice,
      token: await mintAccessToken(alice.id),
      deviceId: aliceDevice.id,
      secrets: [alice.id, alice.email, secretName, secretQr, "alice-secret-error", server.name],
    },
    mallory: { ...mallory, token: await mintAccessToken(mallory.id), deviceId: malloryDevice.id },
    ghost: { ...ghost, token: ghostToken, deviceId: ghostDevice.id },
    userIds: [alice.id, mallory.id, ghost.id],
  };
}

/**
 * Deletes the world's users (their devices cascade) and its server, and ends the pool.
 * Its audit rows stay: the trail is append-only (the retention purge takes them).
 */
export async function dropWorld(): Promise<void> {
  const pending = worldPromise;
  worldPromise = null;
  if (pending) {
    const w = await pending;
    const db = await sql();
    await db`delete from auth.users where id = any(${w.userIds}::uuid[])`;
    await db`delete from public.devices where user_id = any(${w.userIds}::uuid[])`;
    await db`delete from public.backend_servers
              where id = ${w.server.id} or server_name = ${`attacker-server-${w.tag}`}`;
  }
  await closeStack();
}

/**
 * A digest of every row the world owns: its users' devices, its server, and
 * audit rows of its devices (and any naming its server). Rows of other tests,
 * which run at the same time, are left out on purpose.
 */
export async function worldChecksum(w: World): Promise<string> {
  const db = await sql();
  const [row] = await db`
    select md5(concat_ws('#',
      (select string_agg(d::text, '|' order by d.id) from public.devices d
        where d.user_id = any(${w.userIds}::uuid[])
           or d.id = any(${[w.alice.deviceId, w.mallory.deviceId, w.ghost.deviceId]}::uuid[])),
      (select string_agg(s::text, '|' order by s.id) from public.backend_servers s
        where s.id = ${w.server.id}),
      (select string_agg(e::text, '|' order by e.id) from public.device_assignment_events e
        where e.device_id = any(${[w.alice.deviceId, w.mallory.deviceId, w.ghost.deviceId]}::uuid[])
           or e.from_server_id = ${w.server.id} or e.to_server_id = ${w.server.id}),
      (select count(*)::text from public.devices d where d.user_id = ${w.alice.id})
    )) as sum`;
  return row.sum;
}

export const NIL_UUID = "00000000-0000-0000-0000-000000000000";

/** Strings an attacker types where an id, a format or a time is expected. */
export const NASTY_STRINGS = [
  "",
  " ",
  "not-a-uuid",
  "' OR '1'='1",
  "'; drop table public.devices; --",
  "1; select pg_sleep(10)",
  "$$; delete from public.devices; $$",
  "\\x00",
  "\u0000",
  "abc\u0000def",
  "\u0007\u0008\u001b[31m",
  "\r\nSet-Cookie: a=b",
  "../../../etc/passwd",
  "%00",
  "%27%20OR%201=1",
  "{{7*7}}",
  "${jndi:ldap://127.0.0.1/a}",
  "<script>alert(1)</script>",
  "\u202e\ufeff\u200b",
  "😀".repeat(50),
  "\ud800",
  "a".repeat(5000),
  `${NIL_UUID} `,
  ` ${NIL_UUID}`,
  `{${NIL_UUID}}`,
  NIL_UUID.replaceAll("-", ""),
  NIL_UUID.slice(0, 35),
  `${NIL_UUID}0`,
  "00000000-0000-0000-0000-00000000000g",
  "０００００００００-0000-0000-0000-000000000000",
];

// --- requests and their figures ------------------------------------------------------

/** Every hostile answer seen by this process: status → count. */
export const figures = { requests: 0, byStatus: new Map<number, number>() };

function count(status: number): void {
  figures.requests++;
  figures.byStatus.set(status, (figures.byStatus.get(status) ?? 0) + 1);
}

export interface Answer {
  status: number;
  headers: Headers;
  text: string;
}

export async function send(url: string, init: RequestInit = {}): Promise<Answer> {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(20_000) });
  const text = await response.text();
  count(response.status);
  return { status: response.status, headers: response.headers, text };
}

export interface FnRequest {
  method?: string;
  query?: string;
  /** Raw Authorization header value; `token` is shorthand for `Bearer <token>`. */
  authorization?: string;
  token?: string;
  apikey?: string | null;
  contentType?: string | null;
  body?: BodyInit | null;
  json?: unknown;
  headers?: Record<string, string>;
}

/** One call to an edge function; the publishable key rides along unless `apikey: null`. */
export async function callFunction(name: FunctionName, request: FnRequest): Promise<Answer> {
  const w = await world();
  const headers = new Headers(request.headers);
  if (request.apikey !== null) headers.set("apikey", request.apikey ?? w.stack.publishableKey);
  if (request.token !== undefined) headers.set("authorization", `Bearer ${request.token}`);
  if (request.authorization !== undefined) headers.set("authorization", request.authorization);
  let body = request.body ?? null;
  if (request.json !== undefined) body = JSON.stringify(request.json);
  if (request.contentType !== null && body !== null) {
    headers.set("content-type", request.contentType ?? "application/json");
  }
  const query = request.query ? `?${request.query}` : "";
  return await send(`${w.stack.url}/functions/v1/${name}${query}`, {
    method: request.method ?? (body === null ? "GET" : "POST"),
    headers,
    body,
  });
}

// --- what every hostile answer must look like -----------------------------------------

const CONTRACT_503 = new Set(["no_active_servers", "database_unavailable"]);
const ALLOWED_HEADERS = ["authorization", "x-client-info", "apikey", "content-type"];

/** Text that must never reach a caller: credentials, stacks, SQL, internals. */
const LEAK_PATTERNS: [string, RegExp][] = [
  ["a JWT", /eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/],
  ["a secret key", /sb_secret_[A-Za-z0-9_-]{8,}/],
  ["a stack trace", /\bat (?:async )?\S*\s*\(?(?:file:|ext:|node:|\/)[^)\s]*:\d+/],
  ["a source path", /file:\/\/|\/work\/|\/home\/|\.ts:\d+/],
  ["SQL text", /\b(?:select|insert|update|delete)\b[\s\S]{0,80}\b(?:from|into|set|where)\b/i],
  ["an internal schema", /device_assignment\.|auth\.users|pg_catalog|SQLSTATE|syntax error at/i],
  ["a database error", /violates|invalid input syntax|relation "|column "|permission denied/i],
];

export interface Expectation {
  /** Statuses this request may get; any other fails the test. */
  statuses: readonly number[];
  /** Credentials or secrets sent or held by the test that must not come back. */
  secrets?: readonly string[];
  /** Error code required, when the case pins one. */
  code?: string;
}

/**
 * The invariant of the suite: a listed status, never a 500; an error body of
 * `{error: {code, message}}` with CORS and no-store; and nothing in the body or
 * headers that is a credential, a stack, SQL text or another user's data.
 */
export async function assertHostileAnswer(
  answer: Answer,
  expect: Expectation,
  label: string,
): Promise<void> {
  const w = await world();
  const where = `${label} → ${answer.status} ${answer.text.slice(0, 300)}`;
  assert.ok(answer.status < 500 || answer.status === 503, `5xx other than 503: ${where}`);
  assert.ok(expect.statuses.includes(answer.status), `unexpected status: ${where}`);

  assert.equal(answer.headers.get("access-control-allow-origin"), "*", `CORS origin: ${where}`);
  const allowed = (answer.headers.get("access-control-allow-headers") ?? "").toLowerCase();
  for (const header of ALLOWED_HEADERS) {
    assert.ok(allowed.includes(header), `CORS allow-headers lacks ${header}: ${where}`);
  }

  const leaks = [
    ...(expect.secrets ?? []),
    ...w.alice.secrets,
    w.stack.secretKey,
    w.stack.jwtSecret,
    w.stack.serviceRoleKey,
    w.alice.token,
    w.mallory.token,
  ].filter((s) => s.length >= 8);
  const exposed = answer.text + "\n" + [...answer.headers].map(([k, v]) => `${k}: ${v}`).join("\n");
  for (const secret of leaks) {
    assert.ok(!exposed.includes(secret), `leaks ${secret.slice(0, 12)}…: ${where}`);
  }

  if (answer.status >= 200 && answer.status < 300) return;
  assert.equal(answer.headers.get("cache-control"), "no-store", `no-store: ${where}`);
  assert.match(answer.headers.get("content-type") ?? "", /application\/json/, `JSON: ${where}`);
  const body = JSON.parse(answer.text);
  assert.equal(typeof body?.error?.code, "string", `error.code: ${where}`);
  assert.equal(typeof body?.error?.message, "string", `error.message: ${where}`);
  if (expect.code) assert.equal(body.error.code, expect.code, `error code: ${where}`);
  if (answer.status === 503) {
    assert.ok(CONTRACT_503.has(body.error.code), `503 outside the contract: ${where}`);
    assert.ok(answer.headers.get("retry-after"), `503 without Retry-After: ${where}`);
  }
  if (answer.status === 405) assert.ok(answer.headers.get("allow"), `405 without Allow: ${where}`);
  for (const [what, pattern] of LEAK_PATTERNS) {
    assert.doesNotMatch(answer.text, pattern, `leaks ${what}: ${where}`);
  }
}

/** Runs `cases` with at most `width` in flight; each gets its index. */
export async function inParallel<T>(
  cases: readonly T[],
  width: number,
  run: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  await Promise.all(
    Array.from({ length: Math.min(width, cases.length) }, async () => {
      while (next < cases.length) {
        const index = next++;
        try {
          await run(cases[index], index);
        } catch (error) {
          errors.push(error);
        }
      }
    }),
  );
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) {
    throw new AggregateError(
      errors,
      `${errors.length} cases failed:\n` +
        errors.map((e) => (e instanceof Error ? e.message : String(e))).join("\n"),
    );
  }
}

// --- tokens an attacker can make -----------------------------------------------------

function b64url(value: unknown): string {
  return jose.base64url.encode(JSON.stringify(value));
}

function claimsFor(sub: string, url: string, extra: Record<string, unknown> = {}) {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: `${url}/auth/v1`,
    sub,
    aud: "authenticated",
    role: "authenticated",
    iat: now,
    exp: now + 3600,
    session_id: crypto.randomUUID(),
    ...extra,
  };
}

/** Tokens that must each be refused as credentials, with what they try. */
export async function forgedTokens(w: World): Promise<[string, string][]> {
  const jwks = await (await fetch(`${w.stack.url}/auth/v1/.well-known/jwks.json`)).json();
  const realKid: string = jwks.keys?.[0]?.kid ?? "unknown";
  const victim = claimsFor(w.alice.id, w.stack.url);
  const { privateKey: strangerKey } = await jose.generateKeyPair("ES256");
  const signWith = (key: CryptoKey | Uint8Array, alg: string, kid?: string) =>
    new jose.SignJWT(victim).setProtectedHeader({ alg, typ: "JWT", ...(kid ? { kid } : {}) })
      .sign(key);
  const valid = await mintAccessToken(w.mallory.id);
  const [h, , s] = valid.split(".");

  return [
    ["alg none", `${b64url({ alg: "none", typ: "JWT" })}.${b64url(victim)}.`],
    ["alg None with signature", `${b64url({ alg: "None", typ: "JWT" })}.${b64url(victim)}.${s}`],
    [
      "ES256 signed by a stranger's key with the project's kid",
      await signWith(strangerKey, "ES256", realKid),
    ],
    ["ES256 with an unknown kid", await signWith(strangerKey, "ES256", "not-a-kid")],
    [
      "HS256 with a guessed secret",
      await signWith(new TextEncoder().encode("x".repeat(40)), "HS256"),
    ],
    [
      "HS256 keyed with the public JWKS (algorithm confusion)",
      await signWith(new TextEncoder().encode(JSON.stringify(jwks.keys?.[0] ?? {})), "HS256"),
    ],
    ["a valid header and signature around another user's claims", `${h}.${b64url(victim)}.${s}`],
    ["expired an hour ago", await mintAccessToken(w.mallory.id, { expiresIn: -3600 })],
    ["expired HS256", await mintAccessToken(w.mallory.id, { alg: "HS256", expiresIn: -3600 })],
    ["two segments", `${h}.${b64url(victim)}`],
    ["four segments", `${valid}.${s}`],
    ["not base64", "not.a.jwt!"],
    ["garbage", "garbage"],
    ["the publishable key", w.stack.publishableKey],
    ["the legacy anon key", w.stack.anonKey],
    ["a made-up secret key", "sb_secret_thisisnotthekey000000000000"],
    ["a made-up publishable key", "sb_publishable_thisisnotthekey0000000000"],
  ];
}
