/**
 * A short chaos run inside `make test`: the same faults and invariants as
 * `make chaos` (tests/chaos/chaos.ts), for about half a minute, with a fixed
 * seed. A second, smaller run corrupts a few of its own rows behind the API's
 * back and must report them, so the invariant checks are known to bite.
 * (The session invariants 6 and 7 were also seen to fire, 50 times each in
 * 30 s, on a database whose session fence was removed by hand.)
 */
import assert from "node:assert/strict";
import { runChaos } from "./chaos.ts";

Deno.test({
  name:
    "half a minute of kills, partitions and bulk reassignments breaks no invariant, linked sessions included",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const result = await runChaos({
      seconds: 30,
      workers: 3,
      devices: 18,
      users: 3,
      seed: 20261128,
      reportPath: "test-results/chaos-short-report.md",
      log: () => {},
    });
    const injected = Object.entries(result.faults)
      .filter(([fault]) => !fault.startsWith("user scans") && !fault.startsWith("fault skipped"))
      .reduce((sum, [, n]) => sum + n, 0);
    assert.ok(injected >= 10, `only ${injected} faults injected: ${JSON.stringify(result.faults)}`);
    assert.ok(result.snapshots >= 50, `only ${result.snapshots} snapshots`);
    // The faults met linked devices: sessions failed over, were resumed, and a
    // partitioned server's late session writes were refused.
    const { sessions } = result;
    assert.ok(sessions.linked >= 3, `only ${sessions.linked} devices linked`);
    assert.ok(sessions.failovers >= 1 && sessions.resumesConnected >= 1, result.report);
    assert.ok(sessions.writesFenced + sessions.staleProbes.fenced >= 1, result.report);
    // WhatsApp broke for every server: the database held the failed devices in
    // an incident. (Whether one is still open at the mend, so that its release
    // can be timed, and whether the single failure met a device that stayed
    // put, depend on the run's timing: the report gives both, and invariants
    // 9 and 9b judge them whenever they happen.)
    assert.ok(result.incidents.incidents.length >= 1, result.report);
    assert.ok(result.incidents.devicesHeld >= 2, result.report);
    // Every invariant holds, 8b included: a server restarted under its name
    // before its lease lapsed hands its linked devices to its new process
    // (server_heartbeat's instance id).
    const broken = Object.values(result.violations).reduce((sum, list) => sum + list.length, 0);
    assert.equal(broken, 0, result.report);
  },
});

Deno.test({
  name:
    "the chaos checks report a stale QR, a doubly owned epoch, an epoch that went back, a linked device without creds, a session entry nobody may write and a held device moved twice",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const result = await runChaos({
      seconds: 6,
      workers: 2,
      devices: 6,
      users: 1,
      seed: 7,
      injectViolations: true,
      reportPath: "test-results/chaos-self-check-report.md",
      log: () => {},
    });
    assert.ok(result.violations.stale_write.length >= 1, result.report);
    assert.ok(result.violations.single_owner.length >= 1, result.report);
    assert.ok(result.violations.rows_intact.length >= 1, result.report);
    assert.ok(result.violations.session_kept.length >= 1, result.report);
    assert.ok(result.violations.session_write.length >= 1, result.report);
    assert.ok(result.violations.fleet_incident.length >= 1, result.report);
  },
});
