/**
 * The fleet's control API drives real worker processes. No stack is needed:
 * the workers point at a closed port, so they start, fail to heartbeat, and
 * still obey their controls.
 */
import assert from "node:assert/strict";
import { Fleet } from "../../worker/fleet.ts";
import { fleetControl } from "../../worker/fleet_control.ts";
import { CONTROL_TOKEN_HEADER } from "../../worker/control_auth.ts";

/** A control request as the fleet's own page sends it: with the fleet's per-run token. */
function call(
  fleet: Fleet,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = { [CONTROL_TOKEN_HEADER]: fleet.controlToken },
) {
  return fleetControl(
    fleet,
    new Request(`http://127.0.0.1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
  );
}

Deno.test("the fleet control API adds, partitions, heals, kills and restarts workers", async () => {
  const fleet = new Fleet({
    env: {
      SUPABASE_URL: "http://127.0.0.1:9",
      SUPABASE_SECRET_KEY: "sb_secret_unused",
      SUPABASE_PUBLISHABLE_KEY: "sb_publishable_unused",
      // Nothing listens on port 9: the worker keeps trying to sign in.
      BACKEND_EMAIL: "control@backend.invalid",
      BACKEND_PASSWORD: "unused",
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
    },
    prefix: "control",
  });
  try {
    const added = await call(fleet, "POST", "/fleet/workers");
    assert.equal(added?.status, 201);
    const { name } = await added!.json();
    assert.equal(name, "control-1");
    await fleet.waitFor((e) => e.worker === name && e.type === "started", 20_000);
    await fleet.waitFor((e) => e.worker === name && e.type === "sign_in_failed", 20_000);

    const partitioned = await call(fleet, "POST", `/fleet/workers/${name}/partition`, {});
    assert.equal((await partitioned!.json()).worker.state, "partitioned");
    const ack = await fleet.waitFor((e) => e.type === "partitioned", 5_000);
    assert.equal(ack.selfFencing, false, "a plain partition suspends self-fencing");

    await call(fleet, "POST", `/fleet/workers/${name}/heal`);
    await fleet.waitFor((e) => e.type === "healed", 5_000);

    // A page of another site may not command the fleet, however it sends the POST, even
    // with the token; nor may anyone without this run's token, whatever its origin.
    const token = { [CONTROL_TOKEN_HEADER]: fleet.controlToken };
    const otherRun = new Fleet({ env: {}, prefix: "other" }).controlToken;
    assert.notEqual(otherRun, fleet.controlToken, "every run has its own token");
    for (
      const headers of [
        { ...token, origin: "https://evil.example" } as Record<string, string>,
        { ...token, "sec-fetch-site": "cross-site" },
        { ...token, "sec-fetch-site": "same-site", origin: "http://localhost:1" },
        {},
        { origin: "http://127.0.0.1", "sec-fetch-site": "same-origin" },
        { [CONTROL_TOKEN_HEADER]: "" },
        { [CONTROL_TOKEN_HEADER]: fleet.controlToken.slice(0, -1) },
        { [CONTROL_TOKEN_HEADER]: `${fleet.controlToken}0` },
        { [CONTROL_TOKEN_HEADER]: otherRun },
      ]
    ) {
      for (
        const path of [
          `/fleet/workers/${name}/kill`,
          "/fleet/workers",
          "/fleet/scan",
          "/fleet/enter-code",
        ]
      ) {
        const refused = await call(fleet, "POST", path, { device_id: "x" }, headers);
        assert.equal(refused?.status, 403, `${path} ${JSON.stringify(headers)}`);
        assert.equal((await refused!.json()).error.code, "forbidden");
      }
    }
    assert.equal(fleet.info(name).state, "running", "a refused kill kills nothing");
    assert.equal(fleet.list().length, 1, "a refused add adds nothing");
    const sameOrigin = { origin: "http://127.0.0.1", "sec-fetch-site": "same-origin" };
    assert.equal(
      (await call(fleet, "GET", "/fleet", undefined, sameOrigin))?.status,
      200,
      "reading needs no token",
    );

    const firstPid = fleet.info(name).pid;
    const killed = await call(fleet, "POST", `/fleet/workers/${name}/kill`);
    assert.equal((await killed!.json()).worker.state, "killed");
    const exit = await fleet.waitFor((e) => e.worker === name && e.type === "exited", 5_000);
    assert.equal(exit.signal, "SIGKILL");

    const restarted = await call(fleet, "POST", `/fleet/workers/${name}/restart`);
    const info = (await restarted!.json()).worker;
    assert.notEqual(info.pid, firstPid);
    assert.equal(info.restarts, 1);

    const list = await (await call(fleet, "GET", "/fleet"))!.json();
    assert.deepEqual(list.workers.map((w: { name: string }) => w.name), [name]);

    assert.equal((await call(fleet, "POST", "/fleet/workers/nobody/kill"))?.status, 404);
    assert.equal((await call(fleet, "POST", "/fleet/scan", {}))?.status, 400);
    assert.equal(
      (await call(fleet, "POST", "/fleet/enter-code", { device_id: "x" }))?.status,
      400,
      "a code is required",
    );
    const entered = await call(fleet, "POST", "/fleet/enter-code", { device_id: "x", code: "AB" });
    assert.deepEqual(await entered!.json(), { device_id: "x", connected: false, worker: null });
    assert.equal((await call(fleet, "GET", "/fleet/workers/control-1/kill"))?.status, 405);
    assert.equal(await call(fleet, "GET", "/elsewhere"), null);
  } finally {
    await fleet.stopAll();
  }
  assert.ok(
    fleet.list().every((w) => w.state === "stopped" || w.state === "killed"),
    "no worker outlives stopAll",
  );
  const graceful = fleet.events.filter((e) => e.type === "exited").at(-1)!;
  assert.equal(graceful.code, 0, "SIGTERM ends a worker cleanly");
});
