/**
 * Chaos with invariants: a simulated fleet (worker/fleet.ts) on the real local
 * stack, with random hard kills, restarts, graceful stops, heartbeat
 * partitions that heal late, operator bulk reassignments, deliberate stale
 * writes, and users polling `get-device-qr` and asking `reassign-device`, all
 * at once. The invariants are checked from the database (periodic snapshots
 * and the audit trail), not from what the workers say about themselves:
 *
 *   1. single owner: per device, each epoch in the audit trail names one
 *      server, epochs only grow, and the row's epoch is the last audited one;
 *   2. fencing: no write with a stale epoch is accepted (the probe's stale
 *      writes are refused and never land in a row; no worker publish goes
 *      through after the database moved the device to a newer epoch);
 *   3. orphans: no connecting device stays orphaned longer than the bound
 *      while a live server with room exists;
 *   4. no device row is lost or corrupted (owner, name, monotonic epoch);
 *   5. the functions answer every user request with a contract status,
 *      never a 500;
 *   6. one session holder: never do two live workers that believe they hold
 *      the same device both get accepted by the database (each believer's
 *      server and epoch are tried against the fence, read-only);
 *   7. no session write from a non-owner: every `device_session_write` the
 *      database accepted carried the server the epoch was audited to, and was
 *      sent before a newer epoch was; stale session probes are refused and
 *      never land;
 *   8. no session lost while linked: a `connected` or `reconnecting` device
 *      always has its stored creds, a linked device never falls back to
 *      pairing, and after the run every linked device is `connected` on a
 *      live server, without a QR;
 *   8b. and held there: a live worker of that server has it at the row's
 *      epoch. (A server SIGKILLed and restarted under its name before its
 *      lease lapses keeps its id, so the database never fails its linked
 *      devices over, while the new process holds none of them.)
 *   9. WhatsApp failing on every server is a fleet incident: a device it holds
 *      is moved at most once while it lasts, never runs out of budget for it,
 *      and shows a QR within one poll once it ends (incidents.ts);
 *   9b. a failure on one server alone is retried on another.
 *
 * Users scan some QRs, so linked devices meet the kills and partitions: their
 * sessions fail over to live servers, which resume them from the store, and
 * linked devices write signal keys as message traffic would
 * (worker/session_traffic.ts), so a partitioned server's late session writes
 * meet the fence.
 *
 * Loopback only, bounded in time and size, stops by itself, and restores the
 * settings it changes. It shares the database with whatever else runs: it
 * watches only its own users' devices, and its bulk operator calls are the
 * ones that cannot hurt other rows (`inactive` heals orphans, which the cron
 * does anyway; `all_connecting` only as a dry run unless `--exclusive`).
 *
 *   deno run -A tests/chaos/chaos.ts --seconds 120 [--workers 4] [--devices 30]
 *     [--users 4] [--seed 42] [--heartbeat-timeout 4] [--exclusive] [--inject-violations]
 *     [--private] [--db-restart [--outage-seconds 5]]
 *     [--whatsapp-outage-seconds 6] [--incident-window 3]
 *
 * `--private` runs on a stack of its own (a copy of supabase/ and local/ on free
 * ports, see private_stack.ts); `--db-restart` does too, and stops PostgreSQL
 * for `--outage-seconds` halfway through.
 *     [--report test-results/chaos-report.md]
 *
 * Exits 1 when any invariant was violated, 2 when the run itself failed.
 *
 * This file is the run; invariants.ts checks it, faults.ts injects its faults,
 * report.ts writes its report, and model.ts holds what they share.
 */
import postgres from "postgres";
import { closeStack, createUser, getStack, mintAccessToken, type Stack } from "../e2e/harness.ts";
import { Fleet } from "../../worker/fleet.ts";
import { Faults } from "./faults.ts";
import { noIncidentFigures } from "./incidents.ts";
import { Invariants } from "./invariants.ts";
import {
  boundFor,
  bump,
  callFunction,
  type ChaosOptions,
  type ChaosResult,
  DEFAULTS,
  type Owner,
  rng,
  sleep,
  violationCount,
} from "./model.ts";
import { type PrivateStack, startPrivateStack } from "./private_stack.ts";
import { renderReport } from "./report.ts";

export {
  type ChaosOptions,
  type ChaosResult,
  DEFAULTS,
  type Invariant,
  INVARIANTS,
  type SessionFigures,
  violationCount,
} from "./model.ts";
export { renderReport } from "./report.ts";

export async function runChaos(partial: Partial<ChaosOptions> = {}): Promise<ChaosResult> {
  const options: ChaosOptions = { ...DEFAULTS, ...partial };
  const privateStack = options.dbRestart || options.privateStack
    ? await startPrivateStack(options.log)
    : null;
  // Nothing else writes to a private stack: bulk reassignments may be real.
  if (privateStack) options.exclusive = true;
  try {
    return await chaosOn(options, privateStack);
  } finally {
    await privateStack?.close();
  }
}

/**
 * The run: its users and their devices, a fleet, then snapshots, users and
 * faults at once until the deadline; the settling; the audit trail; the report.
 */
async function chaosOn(
  options: ChaosOptions,
  privateStack: PrivateStack | null,
): Promise<ChaosResult> {
  const log = options.log;
  const random = rng(options.seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  const between = (lo: number, hi: number) => lo + random() * (hi - lo);

  if (privateStack) {
    for (const [key, value] of Object.entries(privateStack.env)) Deno.env.set(key, value);
  }
  const stack = await getStack();
  if (privateStack && stack.url !== privateStack.env.SUPABASE_URL) {
    throw new Error("--db-restart must run in a process that has not reached another stack yet");
  }
  assertLoopback(stack);
  const db = postgres(stack.dbUrl, { max: 3, onnotice: () => {}, idle_timeout: 5 });
  const tag = `chaos-${crypto.randomUUID().slice(0, 8)}`;
  const invariants = new Invariants(options, log);
  const { allDeviceIds, baseline, sessions } = invariants;

  // --- the world: users, their connecting devices, a fleet ------------------------------
  const [previous] = await db`
    select heartbeat_timeout, incident_window from public.assignment_settings`;
  const [{ t0 }] = await db`select clock_timestamp() as t0`;
  const owners: Owner[] = [];
  let fleet: Fleet | null = null;
  let faults: Faults | null = null;
  const started = Date.now();
  const stop = new AbortController();

  try {
    await db`update public.assignment_settings
             set heartbeat_timeout = make_interval(secs => ${options.heartbeatTimeoutS}),
                 incident_window = make_interval(secs => ${options.incidentWindowS})`;
    for (let u = 0; u < options.users; u++) {
      const user = await createUser(`${tag}-user${u}@example.test`);
      owners.push({ id: user.id, token: await mintAccessToken(user.id), devices: [] });
    }
    for (let d = 0; d < options.devices; d++) {
      const owner = owners[d % owners.length];
      const name = `${tag} phone ${d}`;
      const [row] = await db`
        insert into public.devices (user_id, device_name, status, connecting_since)
        values (${owner.id}, ${name}, 'connecting', now()) returning id`;
      owner.devices.push(row.id);
      allDeviceIds.push(row.id);
      baseline.set(row.id, { userId: owner.id, name });
    }
    // Room for every device with one worker down, and not much more, so the fleet
    // takes few devices of whatever else shares this database.
    const capacity = Math.ceil((options.devices * 1.5) / Math.max(1, options.workers - 1)) + 1;
    fleet = new Fleet({
      env: {
        SUPABASE_URL: stack.url,
        SUPABASE_SECRET_KEY: stack.secretKey,
        SUPABASE_PUBLISHABLE_KEY: stack.publishableKey,
        PATH: Deno.env.get("PATH") ?? "",
        HOME: Deno.env.get("HOME") ?? "",
        WORKER_POLL_MS: String(options.workerPollMs),
        WORKER_MAX_CAPACITY: String(capacity),
        // QRs rotate fast and never run out, so stale owners keep trying to write.
        QR_FIRST_TTL_MS: "2000",
        QR_ROTATION_MS: "1000",
        QR_MAX: "100000",
        QR_GENERATION_MS: "150",
        // Linked devices write signal keys, so partitioned servers' late writes meet the fence.
        WORKER_SESSION_TRAFFIC_MS: "400",
      },
      prefix: tag,
      maxEvents: 200_000,
      onEvent: invariants.believe,
    });
    log(
      `chaos ${tag}: seed ${options.seed}, ${options.workers} workers (capacity ${capacity}), ` +
        `${options.devices} devices of ${options.users} users, ${options.seconds} s`,
    );
    await fleet.start(options.workers, 30_000);

    // --- snapshots: invariants 3 and 4, and stale probe values landing in rows ----------
    const deadline = started + options.seconds * 1000;
    const f = fleet;

    // --- faults, drawn from the same seeded generator ---------------------------------------
    const run = new Faults({
      options,
      log,
      db,
      stack,
      fleet: f,
      invariants,
      owners,
      privateStack,
      random,
      pick,
      between,
      started,
      deadline,
    });
    faults = run;

    // --- snapshots: what the invariants read, every 200 ms --------------------------------
    const snapshotLoop = (async () => {
      while (!stop.signal.aborted) {
        const rows = await invariants.snapshot(db);
        if (rows) {
          invariants.checkSnapshot(rows);
          run.failures.observe(rows);
          await invariants.checkHolders(db);
        }
        await sleep(200, stop.signal);
      }
    })();

    // --- users: poll their QRs, ask for reassignment when told to ------------------------
    const linkTarget = Math.ceil(options.devices / 2);
    const userLoops = owners.map(async (owner) => {
      while (!stop.signal.aborted && Date.now() < deadline) {
        const deviceId = pick(owner.devices);
        const wait = random() < 0.2 ? 1 : 0;
        const qr = await callFunction(stack, "get-device-qr", owner.token, {
          device_id: deviceId,
          wait,
        });
        run.count("get-device-qr", String(qr.status));
        invariants.checkAnswer("get-device-qr", qr);
        const state = qr.body?.status ?? "";
        if (["not_connecting", "qr_timeout", "error"].includes(state) || random() < 0.05) {
          const again = await callFunction(stack, "reassign-device", owner.token, {
            device_id: deviceId,
          });
          run.count("reassign-device (user)", String(again.status));
          invariants.checkAnswer("reassign-device", again);
        }
        // The user scans: the device links and leaves the pairing churn, its
        // session meets the faults instead. About half the devices get linked.
        if (
          state === "ready" && sessions.linked < linkTarget && random() < 0.2 &&
          Date.now() < deadline - 3_000
        ) {
          bump(run.counts, "user scans a QR");
          if (await f.scan(deviceId, 3_000).catch(() => null)) sessions.linked++;
        }
        await sleep(between(100, 400), stop.signal);
      }
    });

    await run.run();
    await Promise.all(userLoops);
    await run.drain();
    // Let the fleet settle with every worker healed, then take the last snapshots.
    for (const w of f.list()) {
      if (w.state === "partitioned") await f.heal(w.name).catch(() => {});
    }
    // Linked devices of a server that is down get back on a live one within the
    // failover bound: its lease lapses, a claim takes the session, a resume ends.
    const settleStart = Date.now();
    const settleBound = options.heartbeatTimeoutS * 1_000 + 4 * options.workerPollMs + 5_000;
    await sleep(Math.min(3_000, options.heartbeatTimeoutS * 500));
    while (Date.now() - settleStart < settleBound && !invariants.allSettled()) await sleep(250);
    stop.abort();
    await snapshotLoop;
    invariants.checkSettled(Date.now() - settleStart);
    await run.failures.check(db, t0);
  } finally {
    stop.abort();
    if (fleet) await fleet.stopAll(3_000).catch((error) => log(`stopAll: ${error}`));
    await db`update public.assignment_settings
             set heartbeat_timeout = ${previous.heartbeat_timeout},
                 incident_window = ${previous.incident_window}`
      .catch((error) => log(`settings not restored: ${error.message}`));
  }

  const { reassignments, publishesAccepted, publishesFenced } = await invariants.checkAuditTrail(
    db,
    t0,
    fleet?.events ?? [],
  );

  // --- clean up our rows -----------------------------------------------------------------
  try {
    await db`delete from auth.users where id = any(${owners.map((o) => o.id)}::uuid[])`;
    await db`delete from public.devices where id = any(${allDeviceIds}::uuid[])`;
    await db`delete from public.backend_servers where server_name like ${tag + "-%"}`;
  } catch (error) {
    log(`cleanup: ${error instanceof Error ? error.message : error}`);
  } finally {
    await db.end({ timeout: 5 });
    await closeStack();
  }

  const { log: _log, ...shown } = options;
  const result: ChaosResult = {
    options: shown,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    faults: faults?.counts ?? {},
    requests: faults?.requests ?? {},
    staleProbes: faults?.staleProbes ?? { attempted: 0, fenced: 0, other: {} },
    outage: faults?.outage ?? { downMs: 0, answersWhileDown: {}, recoveredAfterMs: null },
    reassignments,
    publishesAccepted,
    publishesFenced,
    sessions,
    snapshots: invariants.snapshots,
    longestOrphanMs: invariants.longestOrphanMs,
    longestOrphanWithRoomMs: invariants.longestOrphanWithRoomMs,
    orphanEpisodes: invariants.orphanEpisodes,
    incidents: faults?.failures.figures ?? noIncidentFigures(),
    violations: invariants.violations,
    report: "",
  };
  result.report = renderReport(result, boundFor(options));
  await Deno.mkdir(options.reportPath.replace(/\/[^/]*$/, "") || ".", { recursive: true });
  await Deno.writeTextFile(options.reportPath, result.report);
  return result;
}

function assertLoopback(stack: Stack): void {
  for (const url of [stack.url, stack.dbUrl]) {
    const host = new URL(url.replace(/^postgres(ql)?:/, "http:")).hostname;
    if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(host)) {
      throw new Error(`chaos runs on loopback only; refusing ${host}`);
    }
  }
}

function parseArgs(args: string[]): Partial<ChaosOptions> {
  const options: Partial<ChaosOptions> = {};
  const numeric: Record<string, keyof ChaosOptions> = {
    "--seconds": "seconds",
    "--workers": "workers",
    "--devices": "devices",
    "--users": "users",
    "--seed": "seed",
    "--heartbeat-timeout": "heartbeatTimeoutS",
    "--poll-ms": "workerPollMs",
    "--orphan-bound-ms": "orphanBoundMs",
    "--outage-seconds": "outageSeconds",
    "--whatsapp-outage-seconds": "whatsappOutageSeconds",
    "--incident-window": "incidentWindowS",
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--exclusive") options.exclusive = true;
    else if (arg === "--inject-violations") options.injectViolations = true;
    else if (arg === "--db-restart") options.dbRestart = true;
    else if (arg === "--private") options.privateStack = true;
    else if (arg === "--report") options.reportPath = args[++i];
    else if (numeric[arg]) {
      const value = Number(args[++i]);
      if (!Number.isFinite(value) || value < 0) throw new Error(`${arg} needs a number`);
      (options as Record<string, number>)[numeric[arg]] = value;
    } else throw new Error(`unknown argument ${arg}`);
  }
  // Bounded: a run never exceeds 15 minutes nor 20 workers nor 2,000 devices.
  if (options.seconds !== undefined) options.seconds = Math.min(options.seconds, 900);
  if (options.workers !== undefined) options.workers = Math.min(Math.max(options.workers, 2), 20);
  if (options.devices !== undefined) options.devices = Math.min(options.devices, 2_000);
  if (options.users !== undefined) options.users = Math.max(1, Math.min(options.users, 50));
  return options;
}

if (import.meta.main) {
  let result: ChaosResult;
  try {
    result = await runChaos(parseArgs(Deno.args));
  } catch (error) {
    console.error(`chaos run failed: ${error instanceof Error ? error.stack : error}`);
    Deno.exit(2);
  }
  console.log(result.report);
  console.error(`report written to ${result.options.reportPath}`);
  Deno.exit(violationCount(result) === 0 ? 0 : 1);
}
