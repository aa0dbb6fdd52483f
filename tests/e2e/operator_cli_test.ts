/** The operator CLI as an operator runs it, against the stack under test. */
import assert from "node:assert/strict";
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
