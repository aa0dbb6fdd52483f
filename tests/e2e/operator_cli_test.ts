/** The operator CLI as an operator runs it, against the stack under test. */
import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { decodeJwt } from "jose";
import { closeStack, createUser, getStack, serviceClient, sql } from "./harness.ts";

const REPO = new URL("../../", import.meta.url).pathname;

async function operator(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const stack = await getStack();
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", "cli/operator.ts", ...args],
    cwd: REPO,
    env: { SUPABASE_URL: stack.url, SUPABASE_SECRET_KEY: stack.secretKey },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, out: decode(stdout), err: decode(stderr) };
}

Deno.test("`operator status` prints the health tables, including a server just registered", async () => {
  const name = `e2e-cli-${crypto.randomUUID().slice(0, 8)}`;
  const { error } = await (await serviceClient()).rpc("server_heartbeat", { p_server_name: name });
  assert.equal(error, null);
  const { code, out, err } = await operator("status");
  assert.equal(code, 0, err);
  for (const heading of ["SERVERS", "DEVICES BY STATUS", "DEVICES BY SERVER", "CRON JOBS"]) {
    assert.match(out, new RegExp(`^${heading}$`, "m"));
  }
  assert.match(out, new RegExp(`^${name} +yes `, "m"));
  assert.match(out, /orphaned devices: \d+ +stale devices: \d+/);
});

Deno.test("`operator reset-device <id> --dry-run` lists the move and changes nothing", async () => {
  try {
    const db = await sql();
    const owner = await createUser();
    await (await serviceClient()).rpc("server_heartbeat", {
      p_server_name: `e2e-cli-${crypto.randomUUID().slice(0, 8)}`,
    });
    const [device] = await db`
      insert into public.devices (user_id, device_name, status) values (${owner.id}, 'cli', 'disconnected')
      returning id, assignment_epoch, status`;
    const { code, out, err } = await operator("reset-device", device.id, "--dry-run");
    assert.equal(code, 0, err);
    assert.match(out, /DRY RUN: would reassign 1 device \(scope device\)/);
    assert.match(out, new RegExp(device.id));
    const [after] =
      await db`select assignment_epoch, status from public.devices where id = ${device.id}`;
    assert.equal(after.status, "disconnected");
    assert.equal(after.assignment_epoch, device.assignment_epoch);

    const real = await operator("reset-device", device.id);
    assert.equal(real.code, 0, real.err);
    assert.match(real.out, /^reassigned 1 device/m);
    const [moved] = await db`select status from public.devices where id = ${device.id}`;
    assert.equal(moved.status, "connecting");
  } finally {
    await closeStack();
  }
});

Deno.test("`operator reset-device` with a bad id prints the API's 400, exit 1", async () => {
  const { code, err } = await operator("reset-device", "not-a-uuid");
  assert.equal(code, 1);
  assert.match(err, /400 invalid_request/);
});

/** The lines `server add` prints for the backend, as a record. */
function envLines(out: string): Record<string, string> {
  return Object.fromEntries(
    [...out.matchAll(/^([A-Z_]+)=(\S+)$/gm)].map(([, name, value]) => [name, value]),
  );
}

async function backendClient(email: string, password: string) {
  const stack = await getStack();
  const client = createClient(stack.url, stack.publishableKey, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await client.auth.signInWithPassword({ email, password });
  assert.equal(error, null, error?.message);
  return { client, claims: decodeJwt(data.session!.access_token) };
}

/** Its account goes; its server row stays, like the other e2e servers (the audit trail names it). */
async function forgetServer(name: string): Promise<void> {
  const db = await sql();
  await db`delete from auth.users where raw_app_meta_data ->> 'device_backend' = ${name}`;
}

Deno.test("`operator server add` prints credentials that sign in as that server's account", async () => {
  const name = `e2e-srv-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const { out, err } = await operator("server", "add", name);
    const env = envLines(out);
    assert.equal(env.BACKEND_SERVER_NAME, name, err);
    assert.equal(env.BACKEND_EMAIL, `${name}@backend.invalid`);
    const { claims } = await backendClient(env.BACKEND_EMAIL, env.BACKEND_PASSWORD);
    assert.equal(claims.role, "authenticated");
    assert.equal((claims.app_metadata as Record<string, unknown>).device_backend, name);

    const again = await operator("server", "add", name);
    assert.equal(again.code, 1);
    assert.match(again.err, /already has an account/);
    assert.doesNotMatch(again.out, /BACKEND_PASSWORD/);
  } finally {
    await forgetServer(name);
    await closeStack();
  }
});

// Needs set_backend_server_enabled and the server API's backend accounts
// (migration 20261201150000_least_privilege.sql).
Deno.test("`operator server disable` refuses the server's next heartbeat; `enable` lets it back", async () => {
  const name = `e2e-srv-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const added = await operator("server", "add", name);
    assert.equal(added.code, 0, added.err);
    const env = envLines(added.out);
    const { client } = await backendClient(env.BACKEND_EMAIL, env.BACKEND_PASSWORD);
    const heartbeat = () => client.rpc("server_heartbeat", { p_server_name: name });
    assert.equal((await heartbeat()).error, null, "an enabled server heartbeats as itself");

    const disabled = await operator("server", "disable", name);
    assert.equal(disabled.code, 0, disabled.err);
    assert.notEqual((await heartbeat()).error, null, "a disabled server cannot heartbeat back");

    const enabled = await operator("server", "enable", name);
    assert.equal(enabled.code, 0, enabled.err);
    assert.equal((await heartbeat()).error, null, "an enabled server is back");
  } finally {
    await forgetServer(name);
    await closeStack();
  }
});
