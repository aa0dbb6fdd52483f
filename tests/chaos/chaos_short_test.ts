/**
 * A short chaos run inside `make test`: the same faults and invariants as
 * `make chaos` (tests/chaos/chaos.ts), for about half a minute, with a fixed
 * seed. A second, smaller run corrupts a few of its own rows behind the API's
 * back and must report them, so the invariant checks are known to bite.
 */
import assert from "node:assert/strict";
import { runChaos, violationCount } from "./chaos.ts";

Deno.test({
  name: "half a minute of kills, partitions and bulk reassignments breaks no invariant",
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
    assert.equal(violationCount(result), 0, result.report);
  },
});

Deno.test({
  name: "the chaos checks report a stale QR, a doubly owned epoch and an epoch that went back",
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
  },
});
