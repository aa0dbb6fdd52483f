/**
 * Renders bench/results/REPORT.md and its charts from one run's results.
 * Every target is stated as met or missed with the figure that decides it.
 */
import type { FailoverReport } from "./failover.ts";
import { barChart, logLogChart } from "./lib/chart.ts";
import { type PeerResult, PEERS } from "./peers.ts";
import type { MemoryReport, MemoryRun } from "./memory.ts";
import { fmt, type Summary } from "./lib/stats.ts";
import type { CostCell, Endpoint, RequestCostReport } from "./request_cost.ts";
import type { SessionFailoverReport } from "./session_failover.ts";
import type { SessionStoreReport } from "./session_store.ts";
import type { ClaimStep, Plan, ScaleReport, ScaleResult } from "./sql_scale.ts";

export interface Environment {
  date: string;
  mode: "quick" | "full";
  durationSeconds: number;
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  loadBefore: string;
  loadAfter: string;
  deno: string;
  postgres: string;
  supabaseCli: string;
  packages: Record<string, string>;
  commit: string;
}

export interface BenchResults {
  env: Environment;
  requestCost: RequestCostReport | null;
  sqlScale: ScaleReport | null;
  peers: PeerResult[] | null;
  failover: FailoverReport | null;
  sessionFailover: SessionFailoverReport | null;
  sessionStore: SessionStoreReport | null;
  memory: MemoryReport | null;
}

interface Verdict {
  /** Which explanation in `missNotes` applies when the target is missed. */
  key?: string;
  target: string;
  measured: string;
  met: boolean | null;
}

const ENDPOINT_LABEL: Record<Endpoint, string> = {
  floor: "floor (bench fn → bench_floor RPC)",
  json: "get-device-qr json",
  png: "get-device-qr png (cached)",
  "rest-floor": "direct /rest/v1/rpc/bench_floor",
  "rest-qr": "direct /rest/v1/rpc/get_device_qr",
};

const ms = (s: Summary) => `${fmt(s.median)} ms (${fmt(s.min)}–${fmt(s.max)})`;
const mark = (met: boolean | null) => (met === null ? "n/a" : met ? "**met**" : "**missed**");

function cell(cells: CostCell[], endpoint: Endpoint, concurrency: number): CostCell | undefined {
  return cells.find((c) => c.endpoint === endpoint && c.concurrency === concurrency);
}

function requestCostSection(r: RequestCostReport, verdicts: Verdict[]): string {
  const lines: string[] = [
    "Every request goes through a private instance of the local gateway (local/gateway, the same code as on :54321) on its own database, the function in its own Deno process, and back through the gateway's /rest/v1/rpc to PostgreSQL. 64 users each poll their own connecting device, which has a fresh QR on a live server, so no request heals. The **floor** is a bench-only function ([bench/fixtures/floor](../fixtures/floor/index.ts)) served by the same gateway and runtime: it authenticates the user exactly like get-device-qr (the shared `supabaseAuth`) and makes the cheapest authenticated RPC, `bench_floor()` (SQL returning `auth.uid()`, created only in the benchmark's database). The direct `/rest/v1/rpc` rows (no function) show what the function hop costs. PNG is served from the function's image cache (the same QR value on every poll).",
    "",
  ];
  const concurrencies = [...new Set(r.cells.map((c) => c.concurrency))];
  lines.push(
    "| endpoint | conc. | req/s median (min–max) | p50 ms | p99 ms | cost vs floor (floor req/s ÷ req/s) |",
    "|---|---:|---:|---:|---:|---:|",
  );
  for (const concurrency of concurrencies) {
    const floor = cell(r.cells, "floor", concurrency)!;
    for (const c of r.cells.filter((x) => x.concurrency === concurrency)) {
      const ratio = floor.perSecond.median / c.perSecond.median;
      lines.push(
        `| ${ENDPOINT_LABEL[c.endpoint]} | ${concurrency} | ${fmt(c.perSecond.median)} (${
          fmt(c.perSecond.min)
        }–${fmt(c.perSecond.max)}) | ${fmt(c.p50.median)} | ${fmt(c.p99.median)} | ${
          fmt(ratio)
        }× |`,
      );
    }
  }
  lines.push(
    "",
    `Runs per cell: ${
      r.cells[0]?.runs.length ?? 0
    }, closed loop (each client sends its next request when the previous one ends), endpoints interleaved within each repetition. Errors: ${
      r.cells.reduce((s, c) => s + c.runs.reduce((t, x) => t + x.errors, 0), 0)
    }. The load generator runs on the same 2 cores as the gateway, the function processes and PostgreSQL, so absolute figures are low; ratios measured in one run are what to compare.`,
    "",
    "Database statements per request (pg_stat_statements, top-level statements, this benchmark's database only, sequential requests). Each request is one transaction of the gateway: BEGIN, the request settings (`set_config`), the gateway's routine lookup (the local gateway reads `pg_proc` on every call where PostgREST keeps a schema cache), and the RPC itself; the floor pays the same.",
    "",
    "| endpoint | requests | statements / request | RPC statements / request | RPC mean exec ms | statements |",
    "|---|---:|---:|---:|---:|---|",
  );
  for (const s of r.statements) {
    lines.push(
      `| ${ENDPOINT_LABEL[s.endpoint]} | ${s.requests} | ${fmt(s.perRequest)} | ${
        fmt(s.rpcPerRequest)
      } | ${fmt(s.rpcMeanMs)} | ${
        s.breakdown.map((b) => `\`${b.query.slice(0, 48)}…\` ×${fmt(b.perRequest)}`).join("<br>")
      } |`,
    );
  }
  const json16 = cell(r.cells, "json", 16);
  const floor16 = cell(r.cells, "floor", 16);
  if (json16 && floor16) {
    const ratio = floor16.perSecond.median / json16.perSecond.median;
    verdicts.push({
      key: "cost",
      target: "get-device-qr (json) ≤ 1.3× the floor at concurrency 16",
      measured: `${fmt(ratio)}× (${fmt(json16.perSecond.median)} vs ${
        fmt(floor16.perSecond.median)
      } req/s)`,
      met: ratio <= 1.3,
    });
  }
  const png16 = cell(r.cells, "png", 16);
  if (png16 && floor16) {
    const ratio = floor16.perSecond.median / png16.perSecond.median;
    verdicts.push({
      key: "cost",
      target: "get-device-qr (png, cached) ≤ 1.3× the floor at concurrency 16",
      measured: `${fmt(ratio)}× (${fmt(png16.perSecond.median)} vs ${
        fmt(floor16.perSecond.median)
      } req/s)`,
      met: ratio <= 1.3,
    });
  }
  const stmts = r.statements.find((s) => s.endpoint === "json");
  if (stmts) {
    verdicts.push({
      target: "exactly 1 RPC statement per get-device-qr without wait",
      measured: `${fmt(stmts.rpcPerRequest)} RPC statement (${
        fmt(stmts.perRequest)
      } statements in all, incl. the gateway's transaction and settings)`,
      met: Math.abs(stmts.rpcPerRequest - 1) < 0.005,
    });
  }
  return lines.join("\n");
}

/** The sample nearest to `done` requests answered. */
function rssAt(run: MemoryRun, done: number): number {
  let best = run.timeline[0];
  for (const s of run.timeline) {
    if (Math.abs(s.done - done) < Math.abs((best?.done ?? Infinity) - done)) best = s;
  }
  return best?.rssMiB ?? NaN;
}

function memorySection(r: MemoryReport, verdicts: Verdict[]): string {
  const n = r.requests.toLocaleString("en-US");
  const early = Math.min(10_000, Math.round(r.requests / 10));
  const lines = [
    `Each function in a fresh private gateway, ${n} requests at concurrency ${r.concurrency} (get-device-qr as JSON, a valid user token, 64 users), the function process's resident set read from \`/proc/<pid>/status\` every 250 ms. Steady is the median of the last samples; peak is the kernel's high-water mark (VmHWM). Restarts are counted from the function's pid under the gateway at every sample and from the gateway's function log (a line for every exit, with the pid).`,
    "",
    `| function | cold start | RSS after 1st request | RSS at ${
      early.toLocaleString("en-US")
    } | steady RSS | peak RSS | req/s | errors | restarts |`,
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const run of r.runs) {
    lines.push(
      `| ${run.fn} | ${ms(run.coldStartMs)} n=${run.coldStartMs.n} | ${
        fmt(run.rssAfterFirstMiB)
      } MiB | ${fmt(rssAt(run, early))} MiB | ${fmt(run.steadyRssMiB)} MiB | ${
        fmt(run.peakRssMiB)
      } MiB | ${fmt(run.perSecond)} | ${run.errors} | ${run.pidChanges + run.exits.length} |`,
    );
  }
  const qr = r.runs.find((x) => x.fn === "get-device-qr");
  const floor = r.runs.find((x) => x.fn === "floor");
  if (qr && floor) {
    lines.push(
      "",
      `Against the floor: steady RSS ${fmt(qr.steadyRssMiB / floor.steadyRssMiB)}×, peak ${
        fmt(qr.peakRssMiB / floor.peakRssMiB)
      }×, cold start ${fmt(qr.coldStartMs.median / floor.coldStartMs.median)}×.`,
    );
  }
  lines.push(
    "",
    `The hosted runtime counts a function's V8 heap in use plus its external memory against the ${r.capMiB} MiB cap (supabase/edge-runtime, crates/base/src/runtime/mod.rs, \`MemCheck\`), not the whole process; the resident set of a Deno process measured here includes the runtime itself (about 48 MiB for a function that answers a constant) and is the stricter figure. Cold start is measured at the client: the gateway starts the function process on its first request (prewarm off), so it includes process start, module loading and that first request.`,
  );
  if (qr) {
    const restarts = qr.pidChanges + qr.exits.length;
    verdicts.push({
      key: "memory",
      target:
        `get-device-qr resident memory ≤ ${r.capMiB} MiB (the hosted cap), ${n} requests at concurrency ${r.concurrency}`,
      measured: `peak ${fmt(qr.peakRssMiB)} MiB, steady ${fmt(qr.steadyRssMiB)} MiB`,
      met: qr.peakRssMiB <= r.capMiB,
    });
    verdicts.push({
      key: "memory",
      target: `get-device-qr: no restart in those ${n} requests`,
      measured:
        `${restarts} restarts (one pid throughout, ${qr.exits.length} exits logged), ${qr.errors} errors`,
      met: restarts === 0 && qr.errors === 0,
    });
  }
  return lines.join("\n");
}

interface StepCost {
  ms: number;
  buffers: number;
}

/** The profiled claim run's steps, each as its share of one call of claim_devices. */
function claimCallCost(
  x: ScaleResult,
): Record<"claim" | "queue" | "move" | "rest", StepCost> | null {
  const steps = x.claimProfile?.steps ?? [];
  const [claim, queue, move] = (["claim", "queue lock", "move"] as const).map((name) =>
    steps.find((st) => st.step === name)
  );
  // claimProfile fails a run that misses a step; older raw results have none.
  if (!claim || !queue || !move) return null;
  const share = (st: ClaimStep): StepCost => ({
    ms: (st.msPerCall * st.calls) / claim.calls,
    buffers: (st.buffersPerCall * st.calls) / claim.calls,
  });
  const [c, q, m] = [share(claim), share(queue), share(move)];
  return {
    claim: c,
    queue: q,
    move: m,
    rest: { ms: c.ms - q.ms - m.ms, buffers: c.buffers - q.buffers - m.buffers },
  };
}

/** The queue lock and the move at the smallest and the largest size, in one sentence. */
function stepsSentence(first: ScaleResult, largest: ScaleResult): string {
  const [a, b] = [claimCallCost(first), claimCallCost(largest)];
  if (!a || !b) return "";
  const step = (x: StepCost, y: StepCost) =>
    `${fmt(x.ms)} → ${fmt(y.ms)} ms while its buffers went ${fmt(x.buffers)} → ${fmt(y.buffers)}`;
  const perPage = (x: ScaleResult) =>
    x.claimProfile.queuePages > 0
      ? ` (${x.claimProfile.queuePages.toLocaleString("en-US")} pages, ${
        fmt(x.claimProfile.queueDevices / x.claimProfile.queuePages)
      } waiting devices to a page)`
      : "";
  return `In the profiled run (per call of claim_devices, table in section 3), from ${
    first.devices.toLocaleString("en-US")
  } devices${perPage(first)} to ${largest.devices.toLocaleString("en-US")}${
    perPage(largest)
  } the queue lock went ${step(a.queue, b.queue)}, and the move ${step(a.move, b.move)}.`;
}

/** The profiled claim run of each size: per call of claim_devices, the time and buffers of each step. */
function claimStepsTable(results: ScaleResult[]): string[] {
  const rows = results.map((x) => ({ x, cost: claimCallCost(x) })).filter((r) => r.cost);
  if (rows.length === 0) return [];
  const cell = (v: StepCost) => `${fmt(v.ms)} ms, ${fmt(v.buffers)} buffers`;
  return [
    "Where a claim's time goes: one more run at each size, with pg_stat_statements tracking the statements inside the functions (which costs time of its own, so its rate stands beside the timed runs'). Per call of claim_devices: wall time (8 claimers share the cores, so waiting for one is included) and shared buffers touched.",
    "",
    "| devices | claims/s, this run | heap pages the waiting devices lie on | whole claim | queue lock (the first `for update skip locked`) | the move (move_devices' update and audit) | the rest |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map(({ x, cost }) =>
      `| ${x.devices.toLocaleString("en-US")} | ${fmt(x.claimProfile.perSecond)} | ${
        x.claimProfile.queuePages.toLocaleString("en-US")
      } | ${cell(cost!.claim)} | ${cell(cost!.queue)} | ${cell(cost!.move)} | ${cell(cost!.rest)} |`
    ),
  ];
}

function sqlSection(r: ScaleReport, verdicts: Verdict[]): string {
  const lines = [
    "| devices | connecting | maintenance, nothing to do | (its own duration_ms) | maintenance, 1% orphaned | bulk reassign_devices('inactive') | claims/s, 8 claimers | double claims | assignment_health() |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const x of r.results) {
    lines.push(
      `| ${x.devices.toLocaleString("en-US")} | ${x.connecting.toLocaleString("en-US")} | ${
        ms(x.idleMs)
      } | ${fmt(x.idleReportedMs.median)} ms | ${ms(x.orphanMs)} for ${
        x.orphanMoved.toLocaleString("en-US")
      } | ${ms(x.bulkMs)} for ${x.bulkMoved.toLocaleString("en-US")} | ${
        fmt(x.claimsPerSecond.median)
      } (${fmt(x.claimsPerSecond.min)}–${fmt(x.claimsPerSecond.max)}) | ${
        x.claims.reduce((s, c) => s + c.duplicates, 0)
      } of ${x.claims.reduce((s, c) => s + c.claimed, 0).toLocaleString("en-US")} | ${
        ms(x.healthMs)
      } |`,
    );
  }
  lines.push(
    "",
    `Times are wall clock at the client (one round trip included), median (min–max) over: maintenance idle n=${
      r.results[0]?.idleMs.n
    }, orphaned n=${r.results[0]?.orphanMs.n}, bulk n=${r.results[0]?.bulkMs.n}, claim runs n=${
      r.results[0]?.claims.length
    }, health n=${
      r.results[0]?.healthMs.n
    }. Orphaned and bulk scenarios run in a transaction that is rolled back; claims are committed and undone after each run. Claim runs: each claimer is a server calling claim_devices(server, 100) on its own servers until a call claims nothing, on a connection warmed first by 6 claims rolled back (plpgsql compiles and plans per connection; a gateway's pooled connections have long done so); a device counts as handed out twice if two calls returned it as claimed or the audit holds two 'claimed' rows for it. Not-idle idle passes: ${
      r.results.map((x) => x.idleNotIdle).join(", ")
    }.`,
  );
  lines.push("", ...claimStepsTable(r.results));
  const largest = r.results[r.results.length - 1];
  const smallest = r.results[0];
  if (largest) {
    verdicts.push({
      target: `idle maintenance ≤ 50 ms at ${largest.devices.toLocaleString("en-US")} devices`,
      measured: ms(largest.idleMs),
      met: largest.devices >= 1_000_000 ? largest.idleMs.median <= 50 : null,
    });
    if (smallest && smallest !== largest) {
      const growth = largest.idleMs.median / smallest.idleMs.median;
      const tableGrowth = largest.devices / smallest.devices;
      verdicts.push({
        key: "idle-growth",
        target: "idle cost grows with the devices that need work, not with the table",
        measured: `idle ×${fmt(growth)} for a table ×${
          fmt(tableGrowth)
        } with 0 devices needing work (${
          largest.connecting.toLocaleString("en-US")
        } connecting devices at the largest size)`,
        met: growth < 1.5,
      });
    }
    if (smallest && smallest !== largest) {
      const ratio = largest.claimsPerSecond.median / smallest.claimsPerSecond.median;
      verdicts.push({
        key: "claims-flat",
        target: `claims flat in table size: claims/s at ${
          largest.devices.toLocaleString("en-US")
        } ≥ 0.9× at ${smallest.devices.toLocaleString("en-US")}`,
        measured: `${fmt(largest.claimsPerSecond.median)} vs ${
          fmt(smallest.claimsPerSecond.median)
        } claims/s: ×${fmt(ratio)}`,
        met: ratio >= 0.9,
      });
    }
    verdicts.push({
      key: "health",
      target: `assignment_health() ≤ 50 ms at ${largest.devices.toLocaleString("en-US")} devices`,
      measured: ms(largest.healthMs),
      met: largest.devices >= 1_000_000 ? largest.healthMs.median <= 50 : null,
    });
    const claims = largest.claimsPerSecond.median;
    verdicts.push({
      key: "claims",
      target: `≥ 10,000 claims/s with 8 claimers (${
        largest.devices.toLocaleString("en-US")
      } devices)`,
      measured: `${fmt(claims)} claims/s`,
      met: claims >= 10_000,
    });
    verdicts.push({
      target: "no device handed out twice",
      measured: `${
        r.results.reduce((s, x) => s + x.claims.reduce((t, c) => t + c.duplicates, 0), 0)
      } double claims, ${
        r.results.reduce((s, x) => s + x.claims.reduce((t, c) => t + c.leftOrphaned, 0), 0)
      } left orphaned`,
      met: r.results.every((x) => x.claims.every((c) => c.duplicates === 0)),
    });
    verdicts.push({
      key: "bulk",
      target: `10,000 reassignments < 1 s (${largest.devices.toLocaleString("en-US")} devices)`,
      measured: `${ms(largest.bulkMs)} for ${largest.bulkMoved.toLocaleString("en-US")}`,
      met: largest.bulkMoved >= 10_000 ? largest.bulkMs.median < 1000 : null,
    });
  }
  return lines.join("\n");
}

/**
 * claim_devices next to the queues people pick instead, measured in the same
 * run: each peer's jobs/s as a ratio to our claims/s at the same size.
 */
function peersSection(peers: PeerResult[], scale: ScaleReport | null, verdicts: Verdict[]): string {
  const sizes = [...new Set(peers.map((p) => p.waiting))].sort((a, b) => a - b);
  const ours = (n: number) => scale?.results.find((x) => x.devices === n)?.claimsPerSecond;
  const lines = [
    `| rows | claim_devices claims/s | ${
      PEERS.map((p) => `${p} ${peers.find((x) => x.peer === p)?.version ?? ""} jobs/s (÷ ours)`)
        .join(" | ")
    } |`,
    `|---:|---:|${PEERS.map(() => "---:").join("|")}|`,
  ];
  for (const n of sizes) {
    const mine = ours(n);
    const cells = PEERS.map((p) => {
      const r = peers.find((x) => x.peer === p && x.waiting === n);
      if (!r) return "–";
      const ratio = mine ? ` (×${fmt(r.perSecond.median / mine.median)})` : "";
      return `${fmt(r.perSecond.median)} (${fmt(r.perSecond.min)}–${fmt(r.perSecond.max)})${ratio}`;
    });
    lines.push(
      `| ${n.toLocaleString("en-US")} | ${
        mine ? `${fmt(mine.median)} (${fmt(mine.min)}–${fmt(mine.max)})` : "not measured"
      } | ${cells.join(" | ")} |`,
    );
    if (mine) {
      const fastest = Math.max(
        ...PEERS.map((p) =>
          peers.find((x) => x.peer === p && x.waiting === n)?.perSecond.median ?? 0
        ),
      );
      verdicts.push({
        key: "peers",
        target: `claim_devices at least as fast as the faster peer (${
          n.toLocaleString("en-US")
        } rows)`,
        measured: `${fmt(mine.median)} vs ${fmt(fastest)} /s: ×${fmt(mine.median / fastest)}`,
        met: mine.median >= fastest,
      });
    }
  }
  const duplicates = peers.reduce((s, p) => s + p.runs.reduce((t, r) => t + r.duplicates, 0), 0);
  lines.push(
    "",
    `Same cluster, same run, 8 concurrent claimers taking batches of 100 until ${
      fmt(peers[0]?.runs[0]?.fetched ?? 0)
    } are taken, median (min–max) of ${
      peers[0]?.runs.length ?? 0
    } runs; rows: devices in our table, jobs waiting in theirs. pg-boss: \`fetch(queue, { batchSize: 100 })\`, which marks jobs active, as a claim does. graphile-worker has no fetch-only API: 8 runners with a local queue of 100 (one query fetches and locks 100 jobs) and batched completion run a task that does nothing, timed from the first job, so its figure also pays for completing jobs. claim_devices does more than either: capacity, fencing epochs, and an audit row per device. Jobs taken twice: ${duplicates}.`,
  );
  return lines.join("\n");
}

/** The plans worth reading: the statements that select work, lock it, or cost time. */
function selectPlans(plans: Plan[]): Plan[] {
  const seen = new Set<string>();
  const chosen: Plan[] = [];
  const interesting =
    /orphaned_devices|stale_devices|skip locked|qr_expires_at <= now\(\)|plan_assignment|with taken as/i;
  for (const plan of plans) {
    const query = plan.text.split("\n")[0];
    if (query.startsWith("Query Text: SELECT 1 FROM ONLY")) continue;
    if (/^Query Text:\s+select (public|device_assignment)\./i.test(query)) continue;
    if (
      !interesting.test(
        plan.text.split(
          /\n(?=\S*(Aggregate|Update|Result|Hash|Limit|CTE|Insert|Function|Nested|Sort|Seq|Index|Subquery|Append|LockRows))/,
        )[0],
      ) && plan.durationMs < 2
    ) continue;
    const key = `${plan.scenario}|${query.slice(0, 80)}`;
    if (seen.has(key)) continue;
    seen.add(key);
    chosen.push(plan);
  }
  return chosen;
}

function plansSection(plans: Plan[]): string {
  if (plans.length === 0) return "Not captured in this mode.";
  const out: string[] = [
    "Captured with `auto_explain` (log_analyze, log_buffers, log_nested_statements; output sent to the client) while the SQL functions ran, so these are the plans the functions really use (plpgsql's cached plans included). Timing instrumentation inflates the durations; the tables above are measured without it. Long uuid arrays are elided.",
    "",
  ];
  for (const plan of selectPlans(plans)) {
    const text = plan.text.replace(/'\{[^}]{120,}\}'/g, "'{…}'").replace(
      /\{[0-9a-f-]{36}(,[0-9a-f-]{36}){3,}\}/g,
      "{…}",
    );
    out.push(
      `#### ${plan.scenario}: ${fmt(plan.durationMs)} ms`,
      "",
      "```",
      text.length > 7000 ? text.slice(0, 7000) + "\n… (truncated)" : text,
      "```",
      "",
    );
  }
  return out.join("\n");
}

/** Per-request cost in µs of CPU-bound throughput: on a saturated machine, 1 / (req/s). */
function usPerRequest(c: CostCell | undefined): number {
  return c ? 1e6 / c.perSecond.median : NaN;
}

/** Causes and fixes, for each missed target; the figures come from this run. */
function missNotes(results: BenchResults, verdicts: Verdict[]): string {
  const missed = new Set(verdicts.filter((v) => v.met === false).map((v) => v.key));
  const out: string[] = [];
  const rc = results.requestCost;
  if (missed.has("cost") && rc) {
    const at = (e: Endpoint) => rc.cells.find((c) => c.endpoint === e && c.concurrency === 16);
    const fnExtra = usPerRequest(at("json")) - usPerRequest(at("floor"));
    const sqlExtra = usPerRequest(at("rest-qr")) - usPerRequest(at("rest-floor"));
    const stmts = (e: Endpoint) => rc.statements.find((s) => s.endpoint === e)?.rpcMeanMs ?? NaN;
    out.push(
      "### Request cost above 1.3× the floor",
      "",
      `At concurrency 16 the machine is saturated, so 1 / throughput is the CPU cost of a request on this box: floor ${
        fmt(usPerRequest(at("floor")))
      } µs, get-device-qr json ${fmt(usPerRequest(at("json")))} µs (+${
        fmt(fnExtra)
      } µs). The same difference measured without the function layer (direct RPC: get_device_qr ${
        fmt(usPerRequest(at("rest-qr")))
      } µs vs bench_floor ${fmt(usPerRequest(at("rest-floor")))} µs) is +${
        fmt(sqlExtra)
      } µs, i.e. ${
        fmt((sqlExtra / fnExtra) * 100)
      }% of the extra cost is the SQL call and its result (pg_stat_statements mean execution ${
        fmt(stmts("json"))
      } ms vs ${
        fmt(stmts("floor"))
      } ms), the rest is the handler (zod on input and output, the PNG data URL in JSON, the long-poll plumbing).`,
      "",
      "What would close it: in `device_assignment.get_device_qr` the common case (a connecting device with a fresh QR, or a connected one) needs no healing; `qr_state` and `is_qr_fresh` are `language sql` functions with `set search_path`, which PostgreSQL never inlines, so each call runs its own executor, and `qr_state` looks the server up in a subquery. Inlining them (drop the `SET` on these two non-security-definer helpers, whose bodies are fully schema-qualified) or building the answer in one statement that joins the server cuts most of that; on the function side, validating the RPC answer with a hand-written type guard instead of zod and caching the data URL string (not only the PNG bytes) per QR value trims the rest.",
      "",
    );
  }
  const scale = results.sqlScale?.results ?? [];
  const largest = scale[scale.length - 1];
  if ((missed.has("claims") || missed.has("claims-flat") || missed.has("peers")) && largest) {
    const first = scale[0];
    out.push(
      "### Claims at the largest table",
      "",
      `Measured with the migrations of this checkout (commit ${results.env.commit}): ${
        fmt(first.claimsPerSecond.median)
      } claims/s at ${first.devices.toLocaleString("en-US")} devices, ${
        fmt(largest.claimsPerSecond.median)
      } at ${largest.devices.toLocaleString("en-US")}. ${stepsSentence(first, largest)}`,
      "",
      "The claim no longer reads more rows at a larger table: a row locked from the claim queue is decided by its lock, every device is read by its key, the error-text trigger fires only when the error changes, and the pairing numbers are read once per claim. What grows is the price of each buffer, and it follows the heap pages the waiting devices lie on (a column of the table above). A claim locks, moves and reads back each device on its page, and while 8 claimers run, the others visit that page too, to skip the rows it holds and to prune what it left. In a small table the waiting devices share their pages with each other; in a large one they lie a few to a page among rows that wait for nothing, so each claimed device costs a page of its own, cold in the CPU caches and pruned for one row or two. perf, measured outside this run: page pruning and the search of each page's tuple chains took over a quarter of the claimers' CPU, and the two cores sat idle 45% of the time, waiting on buffer locks. On one 1,000,000-device table, with the same 3,000 devices waiting, claims ran at 14,200/s when those devices lay on 123 pages and at 8,500/s when they lay on 897. A production table spreads its waiting devices as this run does: a row is stored wherever it was last written.",
      "",
      "Tried, measured outside this run, and not adopted: the claim queue in 8 stripes by device id, each claim starting at a random stripe (about +15% at 1,000,000, nothing at 10,000, and first-come-first-served order is lost across stripes); a narrow claim-queue table of waiting device ids, popped with `skip locked` (about +10%: the pop is cheap, but each popped device must still be locked on its own page, and the table is a second record of who waits, to be kept in step with the devices); the devices table at fillfactor 85 against 100 (the rate followed the pages the waiting devices lay on; the runs at 85 had theirs on fewer pages, so the two effects were not told apart); 512 MB of shared buffers (about +10%)",
      "",
    );
  }
  if (missed.has("idle-growth") && largest) {
    out.push(
      "### Idle maintenance grows with the table",
      "",
      `The idle pass is far under its 50 ms budget (${fmt(largest.idleMs.median)} ms at ${
        largest.devices.toLocaleString("en-US")
      } devices). It finds orphans through the claim queue and a fenced probe per server that is not live (\`connecting_on_non_live_servers\`), and stale devices by a range scan of \`devices_connecting_by_last_progress\`; see the plans in the appendix for what it still reads.`,
      "",
    );
  }
  if (missed.has("bulk") && largest) {
    out.push(
      "### Bulk reassignment over 1 s",
      "",
      "Cause: `assign_devices` locks with `where d.id = any(p_device_ids) ... for update skip locked`; with 10,000 ids the planner prefers a sequential scan of the whole table (random_page_cost 4 on this cluster), and `heal_devices` calls the non-inlinable `cooldown_remaining()` once per candidate. Fix: join `unnest(p_device_ids)` to the primary key, and compare `last_reassigned_at` with the cooldown in the statement (or drop the `SET` on that helper so it inlines).",
      "",
    );
  }
  if (missed.has("memory") && results.memory) {
    const exits = results.memory.runs.flatMap((r) => r.exits.map((line) => `    ${line}`));
    out.push(
      "### get-device-qr over the memory cap, or restarted",
      "",
      "Nothing was diagnosed automatically. A resident set that keeps rising to the end of the run is retained memory: take heap snapshots of the function process before and after (`deno run --inspect`, or `node:v8` `writeHeapSnapshot`) and compare what grew. A flat but high plateau is allocation churn: look for objects built on every request. The function log's exit lines:",
      "",
      ...(exits.length > 0 ? exits : ["    (none)"]),
      "",
    );
  }
  if (out.length === 0) return "Every target measured in this run was met.";
  return out.join("\n");
}

function failoverSection(f: FailoverReport, verdicts: Verdict[]): string {
  const lines = [
    `Settings during the run: heartbeat_timeout ${f.heartbeatTimeoutS} s, worker poll ${
      f.pollMs / 1000
    } s, QR generation ${f.qrGenerationMs} ms; restored afterwards. Time is from the SIGKILL of the server to the moment each device first shows a fresh QR published by a live server.`,
    "",
    "| K devices | path | p50 s | p99 s | max s | recovered | runs |",
    "|---:|---|---:|---:|---:|---:|---:|",
  ];
  for (const row of f.rows) {
    lines.push(
      `| ${row.k} | ${row.path} | ${fmt(row.p50)} | ${fmt(row.p99)} | ${
        fmt(row.max)
      } | ${row.recovered}/${row.total} | ${row.runs} |`,
    );
  }
  lines.push("", f.notes.join("\n"));
  for (const v of f.verdicts) verdicts.push(v);
  return lines.join("\n");
}

function sessionFailoverSection(f: SessionFailoverReport, verdicts: Verdict[]): string {
  const lines = [
    `Settings during the run: heartbeat_timeout ${f.heartbeatTimeoutS} s, worker poll ${
      f.pollMs / 1000
    } s, simulated resume handshake ${f.resumeMs} ms. Time is from the SIGKILL of the server holding K linked devices to the moment each is \`connected\` again on a live server; a device needed a QR when it was shown one after the kill or lost its stored session.`,
    "",
    "| K devices | p50 s | p99 s | max s | kill → lease ran out, p50 s | lease ran out → connected: p50 / p99 / max s | connected | needed a QR | runs |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const row of f.rows) {
    lines.push(
      `| ${row.k} | ${fmt(row.p50)} | ${fmt(row.p99)} | ${fmt(row.max)} | ${
        fmt(row.leaseLeftP50)
      } | ${fmt(row.afterLeaseP50)} / ${fmt(row.afterLeaseP99)} / ${
        fmt(row.afterLeaseMax)
      } | ${row.connected}/${row.total} | ${row.neededQr} | ${row.runs} |`,
    );
  }
  lines.push("", f.notes.join("\n"));
  for (const v of f.verdicts) verdicts.push(v);
  return lines.join("\n");
}

function sessionStoreSection(r: SessionStoreReport): string {
  const kib = (n: number) => `${fmt(n / 1024)} KiB`;
  const lines = [
    "What one Baileys device costs the fenced session store: each `creds.update` (saveCreds) and each `keys.set` batch, as `useDeviceAuthState` hands it to `device_session_write`, and what the device holds once linked.",
    "",
    "| Baileys write | entries | calls | rows written | ms per call |",
    "|---|---:|---:|---:|---:|",
    ...r.writes.map((w) =>
      `| ${w.event} | ${w.entries} | ${fmt(w.calls)} | ${fmt(w.rowsWritten)} | ${fmt(w.ms)} |`
    ),
    "",
    `One device (creds, ${r.initialPreKeys} pre-keys, ${r.sessions} contacts): **${r.device.rows} rows, ${
      kib(r.device.valueBytes)
    } of values, ${
      kib(r.device.rowBytes)
    } of rows**; the creds entry is ${r.credsPlainBytes} bytes of JSON, ${r.credsStoredBytes} stored.`,
    "",
    "| entry type | rows | bytes per value |",
    "|---|---:|---:|",
    ...r.perType.map((t) => `| ${t.type} | ${t.rows} | ${t.meanBytes} |`),
    "",
    r.notes.join("\n"),
  ];
  return lines.join("\n");
}

export function renderReport(
  results: BenchResults,
): { markdown: string; charts: Record<string, string> } {
  const { env } = results;
  const verdicts: Verdict[] = [];
  const charts: Record<string, string> = {};
  const sections: string[] = [];

  if (results.requestCost) {
    sections.push("## 1. Request cost\n", requestCostSection(results.requestCost, verdicts));
    const concurrencies = [...new Set(results.requestCost.cells.map((c) => c.concurrency))];
    charts["request-cost.svg"] = barChart(
      "Requests per second through the local stack (median, whiskers min–max)",
      "requests / s",
      concurrencies.map((concurrency) => ({
        label: `concurrency ${concurrency}`,
        bars: results.requestCost!.cells.filter((c) => c.concurrency === concurrency).map((c) => ({
          series: c.endpoint,
          median: c.perSecond.median,
          min: c.perSecond.min,
          max: c.perSecond.max,
        })),
      })),
    );
    sections.push("\n![requests per second](request-cost.svg)\n");
  }
  if (results.failover) {
    sections.push("## 2. Failover\n", failoverSection(results.failover, verdicts));
  } else {
    sections.push("## 2. Failover\n", "Not run in this mode.");
  }
  if (results.sessionFailover) {
    sections.push(
      "\n## 2b. Session failover (linked devices)\n",
      sessionFailoverSection(results.sessionFailover, verdicts),
    );
  }
  if (results.sessionStore) {
    sections.push("\n## 2c. Session store cost\n", sessionStoreSection(results.sessionStore));
  }
  if (results.sqlScale) {
    sections.push(
      "\n## 3. SQL at scale (1,000 live servers)\n",
      sqlSection(results.sqlScale, verdicts),
    );
    const r = results.sqlScale.results;
    if (r.length > 0) {
      charts["sql-scale.svg"] = logLogChart(
        "SQL at scale: median wall time per call",
        "devices in the table",
        "ms",
        [
          {
            series: "maintenance, idle",
            points: r.map((x) => ({ x: x.devices, y: x.idleMs.median })),
          },
          {
            series: "maintenance, 1% orphaned",
            points: r.map((x) => ({ x: x.devices, y: x.orphanMs.median })),
          },
          {
            series: "reassign ≤10k orphans",
            points: r.map((x) => ({ x: x.devices, y: x.bulkMs.median })),
          },
          {
            series: "assignment_health()",
            points: r.map((x) => ({ x: x.devices, y: x.healthMs.median })),
          },
        ],
        { y: 50, label: "50 ms idle target" },
      );
      sections.push("\n![SQL at scale](sql-scale.svg)\n");
    }
  }
  if (results.peers && results.peers.length > 0) {
    sections.push(
      "\n## 3b. Next to the queues people use\n",
      peersSection(results.peers, results.sqlScale, verdicts),
    );
    const ours = results.sqlScale?.results ?? [];
    charts["claims-peers.svg"] = logLogChart(
      "Claims (jobs) per second against table size, 8 claimers",
      "rows in the table",
      "per second",
      [
        {
          series: "claim_devices",
          points: ours.map((x) => ({ x: x.devices, y: x.claimsPerSecond.median })),
        },
        ...PEERS.map((peer) => ({
          series: peer,
          points: results.peers!.filter((p) => p.peer === peer)
            .map((p) => ({ x: p.waiting, y: p.perSecond.median })),
        })),
      ],
    );
    sections.push("\n![claims per second, ours and the peers](claims-peers.svg)\n");
  }
  if (results.memory) {
    sections.push(
      "\n## 4. Function footprint and memory under load\n",
      memorySection(results.memory, verdicts),
    );
  }

  const head = [
    "# Benchmarks: request cost, failover, SQL at scale, memory",
    "",
    `Generated by \`bench/run.ts${
      env.mode === "quick" ? " --quick" : ""
    }\` on ${env.date} (${env.mode} mode, ${
      fmt(env.durationSeconds)
    } s), commit ${env.commit}. Every figure is a median with its spread (min–max over the runs, n given); the machine is shared with other engineers' tests, so compare ratios taken in the same run.`,
    "",
    "## Machine and versions",
    "",
    `- CPU: ${env.cpu}, ${env.cores} cores; memory ${fmt(env.memoryGiB)} GiB; ${env.kernel}`,
    `- Load average before / after: ${env.loadBefore} / ${env.loadAfter}`,
    `- Deno ${env.deno}; ${env.postgres}; Supabase CLI ${env.supabaseCli}`,
    `- Packages: ${Object.entries(env.packages).map(([k, v]) => `${k} ${v}`).join(", ")}`,
    "",
    "## Targets",
    "",
    "| target | measured | verdict |",
    "|---|---|---|",
    ...verdicts.map((v) => `| ${v.target} | ${v.measured} | ${mark(v.met)} |`),
    "",
  ];
  const tail = [
    "",
    "## Missed targets: causes and fixes",
    "",
    missNotes(results, verdicts),
    "",
    "## Appendix: plans of the hot statements",
    "",
    results.sqlScale ? plansSection(results.sqlScale.plans) : "Not captured.",
  ];
  return { markdown: [...head, ...sections, ...tail].join("\n") + "\n", charts };
}
