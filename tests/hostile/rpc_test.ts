/**
 * The SQL API under hostile arguments, through the Data API (`/rest/v1/rpc`)
 * as every role reaches it: `anon` (publishable key, or the legacy anon key),
 * `authenticated` (a user's token) and `service_role` (the secret key).
 *
 * - anon and authenticated never reach a server or operator RPC, whatever the
 *   arguments: 401 / 403 from PostgREST, or for a user calling the server API
 *   (which backend accounts, also `authenticated`, may execute) 403 `forbidden`
 *   from its guard, and the world's rows stay as they were;
 * - hostile arguments are 4xx, never a 500, for every role;
 * - the internals are not reachable by any path (schema prefix, profile header,
 *   private function names), and the catalog agrees with what the calls show.
 */
import assert from "node:assert/strict";
import { sql } from "../e2e/harness.ts";
import {
  type Answer,
  dropWorld,
  figures,
  inParallel,
  NASTY_STRINGS,
  send,
  type World,
  world,
  worldChecksum,
} from "./kit.ts";
import { writeFigures } from "./figures.ts";

const USER_RPCS = ["get_device_qr", "request_device_reassignment", "request_pairing_code"];
const SERVER_RPCS = [
  "server_heartbeat",
  "claim_devices",
  "publish_device_qr",
  "publish_device_pairing_code",
  "report_device_status",
  "server_shutdown",
];
const SESSION_RPCS = ["device_session_write", "device_session_read"];
const OPERATOR_RPCS = ["reassign_devices", "run_assignment_maintenance", "assignment_health"];
const ALL_RPCS = [...USER_RPCS, ...SERVER_RPCS, ...OPERATOR_RPCS];

type Role = "anon" | "anon (legacy key)" | "authenticated" | "service_role";

function headersFor(w: World, role: Role): Record<string, string> {
  switch (role) {
    case "anon":
      return { apikey: w.stack.publishableKey };
    case "anon (legacy key)":
      return { apikey: w.stack.anonKey, authorization: `Bearer ${w.stack.anonKey}` };
    case "authenticated":
      return { apikey: w.stack.publishableKey, authorization: `Bearer ${w.mallory.token}` };
    case "service_role":
      return { apikey: w.stack.secretKey };
  }
}

async function rpc(
  w: World,
  role: Role,
  name: string,
  body: string,
  extra: Record<string, string> = {},
): Promise<Answer> {
  return await send(`${w.stack.url}/rest/v1/rpc/${name}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headersFor(w, role), ...extra },
    body,
  });
}

/**
 * What every Data API answer must be: a listed status, never a 500, CORS, and
 * for errors PostgREST's `{code, message}` body; no credential, stack or other
 * user's data in it. (PostgREST's own messages may name SQL objects; that is
 * the platform's behaviour and carries no data.)
 */
async function assertRpcAnswer(
  answer: Answer,
  statuses: readonly number[],
  label: string,
): Promise<void> {
  const w = await world();
  const where = `${label} → ${answer.status} ${answer.text.slice(0, 300)}`;
  assert.ok(answer.status < 500, `5xx: ${where}`);
  assert.ok(statuses.includes(answer.status), `unexpected status: ${where}`);
  assert.ok(answer.headers.get("access-control-allow-origin"), `CORS: ${where}`);
  for (
    const secret of [
      ...w.alice.secrets,
      w.alice.token,
      w.mallory.token,
      w.stack.secretKey,
      w.stack.jwtSecret,
      w.stack.serviceRoleKey,
    ]
  ) {
    assert.ok(!answer.text.includes(secret), `leaks ${secret.slice(0, 12)}…: ${where}`);
  }
  assert.doesNotMatch(answer.text, /\bat \S+ \(|file:\/\/|\.ts:\d+/, `stack trace: ${where}`);
  if (answer.status >= 400) {
    const body = JSON.parse(answer.text);
    assert.equal(typeof body.code, "string", `code: ${where}`);
    assert.equal(typeof body.message, "string", `message: ${where}`);
  }
}

// --- hostile values per parameter type ---------------------------------------------------

function nested(depth: number): unknown {
  let value: unknown = [];
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

const HOSTILE_SCALARS: unknown[] = [
  null,
  true,
  -1,
  1.5,
  2 ** 31,
  2 ** 63,
  1e308,
  [],
  {},
  { $gt: "" },
  nested(500),
  ...NASTY_STRINGS,
];

/** Valid-looking arguments: what a caller with rights would send. */
function wellFormedArgs(w: World, name: string): Record<string, unknown> {
  const tagged = `${w.tag}-probe`;
  const args: Record<string, Record<string, unknown>> = {
    get_device_qr: { p_device_id: w.alice.deviceId },
    request_device_reassignment: { p_device_id: w.alice.deviceId },
    request_pairing_code: { p_device_id: w.alice.deviceId, p_phone: "+14155550123" },
    server_heartbeat: { p_server_name: tagged, p_current_load: 0, p_max_capacity: 10 },
    claim_devices: { p_server_id: w.server.id, p_limit: 100 },
    publish_device_qr: {
      p_device_id: w.alice.deviceId,
      p_server_id: w.server.id,
      p_epoch: 7,
      p_qr: "stolen",
      p_expires_at: new Date(Date.now() + 60_000).toISOString(),
    },
    publish_device_pairing_code: {
      p_device_id: w.alice.deviceId,
      p_server_id: w.server.id,
      p_epoch: 7,
      p_code: "STOLEN12",
      p_expires_at: new Date(Date.now() + 60_000).toISOString(),
    },
    report_device_status: {
      p_device_id: w.alice.deviceId,
      p_server_id: w.server.id,
      p_epoch: 7,
      p_status: "disconnected",
    },
    server_shutdown: { p_server_id: w.server.id },
    reassign_devices: { p_scope: "all_connecting" },
    run_assignment_maintenance: {},
    assignment_health: {},
  };
  return args[name];
}

/** Each parameter of `name` swapped, one at a time, for each hostile value. */
function hostileArgSets(w: World, name: string): Record<string, unknown>[] {
  const base = wellFormedArgs(w, name);
  const sets: Record<string, unknown>[] = [];
  for (const param of Object.keys(base)) {
    for (const value of HOSTILE_SCALARS) sets.push({ ...base, [param]: value });
  }
  return sets.length > 0 ? sets : [{}];
}

// --- tests ---------------------------------------------------------------------------

function worldTest(name: string, body: (w: World) => Promise<void>): void {
  Deno.test({
    name,
    fn: async () => {
      try {
        await body(await world());
      } finally {
        await writeFigures(`rpc`);
        await dropWorld();
      }
    },
  });
}

worldTest(
  "anon and authenticated never reach a server or operator RPC, whatever the arguments",
  async (w) => {
    const before = await worldChecksum(w);
    const calls: { role: Role; name: string; args: Record<string, unknown>; wellFormed?: true }[] =
      [];
    // A migrated project's legacy keys are refused before any RPC runs.
    const roles: Role[] = w.stack.kind === "signing"
      ? ["anon", "authenticated"]
      : ["anon", "anon (legacy key)", "authenticated"];
    for (const role of roles) {
      for (const name of [...SERVER_RPCS, ...OPERATOR_RPCS]) {
        calls.push({ role, name, args: wellFormedArgs(w, name), wellFormed: true });
        for (const args of hostileArgSets(w, name)) calls.push({ role, name, args });
      }
    }
    await inParallel(calls, 8, async ({ role, name, args, wellFormed }) => {
      const answer = await rpc(w, role, name, JSON.stringify(args));
      const label = `${role} ${name} ${JSON.stringify(args)}`;
      if (role === "authenticated" && SERVER_RPCS.includes(name)) {
        // Granted (backend accounts are `authenticated`), so the guard answers;
        // arguments PostgREST cannot even cast, or that the function checks
        // before the fence, are 400 first.
        await assertRpcAnswer(answer, [400, 403], label);
        const body = JSON.parse(answer.text);
        if (answer.status === 403) assert.equal(body.message, "forbidden", label);
        if (wellFormed) assert.equal(answer.status, 403, label);
        return;
      }
      const refused = role === "authenticated" ? 403 : 401;
      await assertRpcAnswer(answer, [refused], label);
      assert.equal(JSON.parse(answer.text).code, "42501", `${role} ${name}: ${answer.text}`);
    });
    assert.equal(await worldChecksum(w), before, "the world's rows changed");
    const db = await sql();
    const pattern = `${w.tag}-%`;
    const [{ probes }] = await db`
      select count(*)::int as probes from public.backend_servers where server_name like ${pattern}`;
    assert.equal(probes, 0, "a refused heartbeat registered a server");
  },
);

worldTest("anon never reaches the user RPCs; service_role is no user either", async (w) => {
  const before = await worldChecksum(w);
  const calls: { role: Role; name: string; args: Record<string, unknown>; status: number }[] = [];
  for (const name of USER_RPCS) {
    for (const args of [wellFormedArgs(w, name), ...hostileArgSets(w, name)]) {
      calls.push({ role: "anon", name, args, status: 401 });
      calls.push({ role: "anon (legacy key)", name, args, status: 401 });
      calls.push({ role: "service_role", name, args, status: 403 });
    }
  }
  await inParallel(calls, 8, async ({ role, name, args, status }) => {
    const answer = await rpc(w, role, name, JSON.stringify(args));
    await assertRpcAnswer(answer, [status], `${role} ${name} ${JSON.stringify(args)}`);
  });
  assert.equal(await worldChecksum(w), before, "the world's rows changed");
});

worldTest(
  "a user's hostile arguments to the user RPCs are 4xx and touch nobody's device",
  async (w) => {
    const before = await worldChecksum(w);
    const calls: { name: string; args: Record<string, unknown> }[] = [];
    for (const name of USER_RPCS) {
      for (const args of hostileArgSets(w, name)) calls.push({ name, args });
      calls.push({ name, args: { p_device_id: w.alice.deviceId } });
      calls.push({ name, args: { p_device_id: w.ghost.deviceId } });
      calls.push({ name, args: { p_device_id: w.mallory.deviceId, p_user_id: w.alice.id } });
      calls.push({ name, args: {} });
    }
    await inParallel(calls, 8, async ({ name, args }) => {
      const answer = await rpc(w, "authenticated", name, JSON.stringify(args));
      await assertRpcAnswer(answer, [400, 404], `authenticated ${name} ${JSON.stringify(args)}`);
    });
    assert.equal(await worldChecksum(w), before, "the world's rows changed");
  },
);

worldTest("service_role's hostile arguments are 4xx, and fenced writes stay fenced", async (w) => {
  const before = await worldChecksum(w);
  const db = await sql();
  const calls: { name: string; args: Record<string, unknown>; statuses: number[] }[] = [];
  const refusals = [400, 404, 409];

  // Heartbeats. Any text is a valid name, so names are tagged strings and may
  // register (200); every probe reports itself full (load = capacity = 1), so
  // nothing is ever assigned to it, and probes are removed below. Values that
  // would cast to a server with room (a zero load, a null capacity) are left out.
  const castsToInt = (v: unknown) => typeof v === "string" && /^\s*[+-]?\d+\s*$/.test(v);
  for (const value of HOSTILE_SCALARS) {
    const heartbeat = (args: Record<string, unknown>, statuses: number[]) =>
      calls.push({
        name: "server_heartbeat",
        args: { p_server_name: `${w.tag}-x`, p_current_load: 1, p_max_capacity: 1, ...args },
        statuses,
      });
    if (typeof value === "string") heartbeat({ p_server_name: `${w.tag}-${value}` }, [200, 400]);
    if (!castsToInt(value)) heartbeat({ p_current_load: value }, [400]);
    if (value !== null && !castsToInt(value)) heartbeat({ p_max_capacity: value }, [400]);
    heartbeat({ p_metadata: value }, [200, 400]);
  }
  // Claims from a server that is not live, or no server at all.
  for (const value of HOSTILE_SCALARS) {
    calls.push({
      name: "claim_devices",
      args: { p_server_id: value, p_limit: 10 },
      statuses: [400, 409],
    });
    calls.push({
      name: "claim_devices",
      args: { p_server_id: w.server.id, p_limit: value },
      statuses: refusals,
    });
  }
  calls.push({
    name: "claim_devices",
    args: { p_server_id: crypto.randomUUID(), p_limit: 10 },
    statuses: [409],
  });
  // Fenced writes against the victim's device: wrong epoch, wrong server, junk.
  const fence = (name: string, extra: Record<string, unknown>) =>
    calls.push({ name, args: { ...wellFormedArgs(w, name), ...extra }, statuses: refusals });
  for (const name of ["publish_device_qr", "report_device_status"]) {
    for (const epoch of [6, 8, -1, 0, 2 ** 53, "7; select 1", "0x7", 7.5, null]) {
      fence(name, { p_epoch: epoch });
    }
    for (const server of [crypto.randomUUID(), null, "", "' OR 1=1 --"]) {
      fence(name, { p_server_id: server, p_epoch: 7 });
    }
    for (const value of HOSTILE_SCALARS) fence(name, { p_device_id: value });
  }
  // The victim's current owner and epoch, with arguments that must be refused.
  for (const value of HOSTILE_SCALARS) {
    fence("publish_device_qr", { p_expires_at: value });
    fence("report_device_status", { p_status: value });
  }
  fence("publish_device_qr", { p_expires_at: "1999-01-01T00:00:00Z" });
  fence("publish_device_qr", { p_expires_at: "-infinity" });
  fence("publish_device_qr", { p_qr: "x".repeat(100), p_expires_at: "infinity" });
  // Shutdown of servers that do not exist.
  for (const value of [...HOSTILE_SCALARS, crypto.randomUUID()]) {
    calls.push({ name: "server_shutdown", args: { p_server_id: value }, statuses: [400, 404] });
  }
  // Operator calls that must be refused (bulk scopes only as dry runs).
  for (const value of HOSTILE_SCALARS) {
    calls.push({ name: "reassign_devices", args: { p_scope: value }, statuses: [400] });
    calls.push({
      name: "reassign_devices",
      args: { p_scope: "device", p_device_id: value },
      statuses: [400, 404],
    });
    // A null or false dry run is a real run: only on a device that does not exist.
    calls.push({
      name: "reassign_devices",
      args: { p_scope: "device", p_device_id: crypto.randomUUID(), p_dry_run: value },
      statuses: [400, 404],
    });
  }
  calls.push({
    name: "reassign_devices",
    args: { p_scope: "device", p_device_id: w.alice.deviceId },
    statuses: [409],
  });
  calls.push({
    name: "reassign_devices",
    args: { p_scope: "device", p_device_id: crypto.randomUUID() },
    statuses: [404],
  });
  calls.push({
    name: "reassign_devices",
    args: { p_scope: "inactive", p_device_id: w.alice.deviceId, p_dry_run: true },
    statuses: [400],
  });
  calls.push({ name: "assignment_health", args: { p_verbose: true }, statuses: [404] });
  calls.push({ name: "run_assignment_maintenance", args: { p_force: true }, statuses: [404] });

  try {
    await inParallel(calls, 8, async ({ name, args, statuses }) => {
      const answer = await rpc(w, "service_role", name, JSON.stringify(args));
      await assertRpcAnswer(answer, statuses, `service_role ${name} ${JSON.stringify(args)}`);
      if (answer.status === 200 && name === "reassign_devices") {
        assert.equal(JSON.parse(answer.text).dry_run, true, `not a dry run: ${answer.text}`);
      }
    });
    assert.equal(await worldChecksum(w), before, "the world's rows changed");
  } finally {
    await db`delete from public.backend_servers where server_name like ${w.tag + "-%"}`;
  }
});

worldTest("the internals are not reachable by any path, for any role", async (w) => {
  const names = [
    "device_assignment.server_heartbeat",
    "device_assignment.get_device_qr",
    "device_assignment%2Eget_device_qr",
    "purge_history",
    "current_user_id",
    "raise_api_error",
    "heal_devices",
    "assign_devices",
    "pg_sleep",
    "get_device_qr;select 1",
    "get_device_qr(1)",
    "..%2F..%2Fauth%2Fv1",
    "%00",
    "x".repeat(300),
  ];
  const roles: Role[] = ["anon", "authenticated", "service_role"];
  const calls: { role: Role; name: string; extra?: Record<string, string>; statuses: number[] }[] =
    [];
  for (const role of roles) {
    for (const name of names) calls.push({ role, name, statuses: [400, 404] });
    for (const name of ["purge_history", "server_heartbeat", "get_device_qr"]) {
      calls.push({
        role,
        name,
        extra: { "content-profile": "device_assignment" },
        statuses: [406],
      });
      calls.push({ role, name, extra: { "content-profile": "auth" }, statuses: [406] });
    }
  }
  await inParallel(calls, 8, async ({ role, name, extra, statuses }) => {
    const answer = await rpc(w, role, name, "{}", extra);
    await assertRpcAnswer(answer, statuses, `${role} ${name} ${JSON.stringify(extra ?? {})}`);
  });

  // The catalog agrees: anon may execute nothing of ours; authenticated the user API,
  // and the server API whose guard admits only backend accounts.
  const db = await sql();
  const grants = await db<{ schema: string; name: string; anon: boolean; authed: boolean }[]>`
    select n.nspname as schema, p.proname as name,
           has_function_privilege('anon', p.oid, 'execute') as anon,
           has_function_privilege('authenticated', p.oid, 'execute') as authed
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where (n.nspname = 'device_assignment' or (n.nspname = 'public' and p.proname = any(${ALL_RPCS})))
      and not exists (select from pg_depend d where d.objid = p.oid and d.deptype = 'e')`;
  assert.ok(grants.length >= ALL_RPCS.length, `catalog lists ${grants.length} functions`);
  assert.deepEqual(grants.filter((g) => g.anon).map((g) => `${g.schema}.${g.name}`), []);
  // The two pairing-code helpers public.claim_devices calls as its caller: the
  // number is read only by who may act as its server (09_pairing_codes pgTAP),
  // and the other deletes nothing but expired requests.
  const claimHelpers = ["pairing_phones_wanted", "expire_pairing_requests"];
  const userApi = new Set([
    ...USER_RPCS,
    "end_long_poll",
    ...SERVER_RPCS,
    ...SESSION_RPCS,
    ...claimHelpers,
  ]);
  assert.deepEqual(
    grants.filter((g) => g.authed && !userApi.has(g.name)).map((g) => `${g.schema}.${g.name}`),
    [],
  );
  assert.ok(figures.requests > 0);
});

worldTest("malformed Data API requests are 4xx for every role", async (w) => {
  const bodies = [
    "{",
    "[]",
    "null",
    '"x"',
    "1",
    '{"p_device_id": "x"',
    "\u0000",
    JSON.stringify({ p_device_id: nested(1000) }),
  ];
  const calls: { role: Role; name: string; body: string }[] = [];
  for (const role of ["anon", "authenticated", "service_role"] as Role[]) {
    for (const name of ALL_RPCS) for (const body of bodies) calls.push({ role, name, body });
  }
  await inParallel(calls, 8, async ({ role, name, body }) => {
    const answer = await rpc(w, role, name, body);
    await assertRpcAnswer(answer, [400, 401, 403, 404], `${role} ${name} ${body.slice(0, 30)}`);
  });
  for (const method of ["GET", "PUT", "DELETE"]) {
    const answer = await send(`${w.stack.url}/rest/v1/rpc/assignment_health`, {
      method,
      headers: headersFor(w, "anon"),
    });
    await assertRpcAnswer(answer, [401, 404, 405], `anon ${method} assignment_health`);
  }
});

/**
 * A JSON argument nested 20,000 deep makes PostgreSQL's JSON parser hit
 * `max_stack_depth` (SQLSTATE 54001), which PostgREST maps to 500, and it does
 * so while planning, before the function's EXECUTE privilege is checked, so
 * even anon gets it. The platform does the same; no data or state is at
 * stake. This test pins that it is exactly that refusal and nothing worse.
 */
worldTest(
  "a JSON argument nested past the stack limit is refused without leaking or writing",
  async (w) => {
    const before = await worldChecksum(w);
    const deep = JSON.stringify({ p_device_id: nested(20_000) });
    for (const role of ["anon", "authenticated", "service_role"] as Role[]) {
      for (const name of ["get_device_qr", "claim_devices", "server_shutdown"]) {
        const body = name === "claim_devices"
          ? JSON.stringify({ p_server_id: nested(20_000) })
          : name === "server_shutdown"
          ? JSON.stringify({ p_server_id: nested(20_000) })
          : deep;
        const answer = await rpc(w, role, name, body);
        const label = `${role} ${name} 20000-deep`;
        if (answer.status === 500) {
          assert.equal(JSON.parse(answer.text).code, "54001", `${label}: ${answer.text}`);
          await assertRpcAnswer({ ...answer, status: 400 }, [400], label);
        } else {
          await assertRpcAnswer(answer, [400, 401, 403, 413], label);
        }
      }
    }
    assert.equal(await worldChecksum(w), before, "the world's rows changed");
  },
);
