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
 *
 * `--private` runs on a stack of its own (a copy of supabase/ and local/ on free
 * ports, see private_stack.ts); `--db-restart` does too, and stops PostgreSQL
 * for `--outage-seconds` halfway through.
 *     [--report test-results/chaos-report.md]
 *
 * Exits 1 when any invariant was violated, 2 when the run itself failed.
 */
import postgres from "postgres";
import { closeStack, createUser, getStack, mintAccessToken, type Stack } from "../e2e/harness.ts";
import { Fleet, type FleetEvent } from "../../worker/fleet.ts";
import { type PrivateStack, startPrivateStack } from "./private_stack.ts";

export interface ChaosOptions {
  seconds: number;
  workers: number;
  devices: number;
  users: number;
  seed: number;
  /** `assignment_settings.heartbeat_timeout` for the run, seconds; restored after. */
  heartbeatTimeoutS: number;
  workerPollMs: number;
  /** Longest a device may stay orphaned while a live server has room. */
  orphanBoundMs: number;
  /** Real `all_connecting` bulk reassignments (only on a stack of your own). */
  exclusive: boolean;
  /**
   * Self-check: halfway through, corrupt three of the run's own rows behind the
   * API's back (a QR written at a stale epoch, an epoch audited twice, an
   * epoch that goes back), so the run must report violations.
   */
  injectViolations: boolean;
  /**
   * Restart PostgreSQL once, mid-run, for `outageSeconds`. Runs on a private
   * stack (tests/chaos/private_stack.ts), never on the shared one.
   */
  dbRestart: boolean;
  /** Run on a private stack even without a restart (implied by dbRestart). */
  privateStack: boolean;
  outageSeconds: number;
  /** After the database is back, the functions must answer 200 again within this. */
  recoveryBoundMs: number;
  reportPath: string;
  log: (line: string) => void;
}

export const DEFAULTS: ChaosOptions = {
  seconds: 120,
  workers: 4,
  devices: 30,
  users: 4,
  seed: Date.now() % 1_000_000,
  heartbeatTimeoutS: 4,
  workerPollMs: 300,
  orphanBoundMs: 0, // 0: derived from the poll interval (see boundFor)
  exclusive: false,
  injectViolations: false,
  dbRestart: false,
  privateStack: false,
  outageSeconds: 5,
  recoveryBoundMs: 15_000,
  reportPath: "test-results/chaos-report.md",
  log: (line) => console.error(line),
};

export const INVARIANTS = {
  single_owner: "1. no device has two owners that can write",
  stale_write: "2. no stale-epoch write is accepted",
  orphan_bound: "3. no device orphaned past the bound while a live server has room",
  rows_intact: "4. no device row lost or corrupted",
  api_answers: "5. every user request gets a contract status, never a 500",
  outage: "5b. database down: 503 database_unavailable with Retry-After; recovers by itself",
  session_holder: "6. never two servers with a valid epoch for one session",
  session_write: "7. no session write accepted from a non-owner",
  session_kept: "8. no session lost while its device is linked",
  session_held: "8b. every linked device is held by a live worker of the server the database names",
} as const;
export type Invariant = keyof typeof INVARIANTS;

export interface ChaosResult {
  options: Omit<ChaosOptions, "log">;
  startedAt: string;
  durationMs: number;
  faults: Record<string, number>;
  requests: Record<string, Record<string, number>>;
  staleProbes: { attempted: number; fenced: number; other: Record<string, number> };
  outage: {
    downMs: number;
    answersWhileDown: Record<string, number>;
    recoveredAfterMs: number | null;
  };
  reassignments: Record<string, number>;
  publishesAccepted: number;
  publishesFenced: number;
  sessions: SessionFigures;
  snapshots: number;
  longestOrphanMs: number;
  longestOrphanWithRoomMs: number;
  orphanEpisodes: number;
  violations: Record<Invariant, string[]>;
  report: string;
}

/** What the run did to linked devices, for the report. */
export interface SessionFigures {
  /** Devices linked by a simulated scan during the run. */
  linked: number;
  /** Audit rows with reason `session_failover` (a linked device moved to a live server). */
  failovers: number;
  resumesStarted: number;
  /** A resuming device reported `connected`. */
  resumesConnected: number;
  writesAccepted: number;
  writesFenced: number;
  writesOther: number;
  staleProbes: { attempted: number; fenced: number; other: Record<string, number> };
  /** Moments two or more live workers believed they held one device, each tried against the fence. */
  holderChecks: number;
  /** Devices seen `connected` during the run: linked ones, which must end connected. */
  linkedAtEnd: number;
  /** Linked devices connected on a live server, without a QR, once the run settled. */
  connectedAtEnd: number;
  /** How long the settling after the faults took until then. */
  settleMs: number;
}

/** Orphan bound: a worker poll picks an orphan up; maintenance every 10 s backs it up. */
function boundFor(options: ChaosOptions): number {
  return options.orphanBoundMs > 0 ? options.orphanBoundMs : 4 * options.workerPollMs + 2_500;
}

/** mulberry32: a small seeded generator, so a run can be replayed with --seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

function bump(counts: Record<string, number>, key: string, by = 1): void {
  counts[key] = (counts[key] ?? 0) + by;
}

/** What the functions and the Data API answer, as far as the run reads it. */
/** One device as a database snapshot sees it, with the invariants' inputs. */
interface SnapshotRow {
  id: string;
  user_id: string;
  device_name: string;
  status: string;
  assignment_epoch: string;
  stale_probe: boolean;
  orphaned: boolean;
  room: boolean;
  assigned_server_id: string | null;
  last_error: string | null;
  has_qr: boolean;
  has_creds: boolean;
  probe_landed: boolean;
  on_live_server: boolean;
  at: Date;
}

interface AnswerBody {
  status?: string;
  message?: string;
  error?: { code?: string };
}

interface Answer {
  status: number;
  body: AnswerBody | null;
  text: string;
  retryAfter?: string | null;
}

interface Owner {
  id: string;
  token: string;
  devices: string[];
}

interface Baseline {
  userId: string;
  name: string;
}

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
  const violations: Record<Invariant, string[]> = {
    single_owner: [],
    stale_write: [],
    orphan_bound: [],
    rows_intact: [],
    api_answers: [],
    outage: [],
    session_holder: [],
    session_write: [],
    session_kept: [],
    session_held: [],
  };
  const violate = (invariant: Invariant, message: string) => {
    if (violations[invariant].length < 50) violations[invariant].push(message);
    if (violations[invariant].length <= 3) log(`VIOLATION ${invariant}: ${message}`);
  };
  const faults: Record<string, number> = {};
  const requests: Record<string, Record<string, number>> = {};
  const staleProbes = { attempted: 0, fenced: 0, other: {} as Record<string, number> };
  const outage = {
    downMs: 0,
    answersWhileDown: {} as Record<string, number>,
    recoveredAfterMs: null as number | null,
  };
  const count = (what: string, status: string) => bump(requests[what] ??= {}, status);

  // --- the world: users, their connecting devices, a fleet ------------------------------
  const [previous] = await db`select heartbeat_timeout from public.assignment_settings`;
  const [{ t0 }] = await db`select clock_timestamp() as t0`;
  const owners: Owner[] = [];
  const baseline = new Map<string, Baseline>();
  let fleet: Fleet | null = null;
  const started = Date.now();
  const stop = new AbortController();
  let snapshots = 0;
  let longestOrphanMs = 0;
  let longestOrphanWithRoomMs = 0;
  let orphanEpisodes = 0;
  const allDeviceIds: string[] = [];
  const sessions: SessionFigures = {
    linked: 0,
    failovers: 0,
    resumesStarted: 0,
    resumesConnected: 0,
    writesAccepted: 0,
    writesFenced: 0,
    writesOther: 0,
    staleProbes: { attempted: 0, fenced: 0, other: {} },
    holderChecks: 0,
    linkedAtEnd: 0,
    connectedAtEnd: 0,
    settleMs: 0,
  };
  /** Devices seen `connected` at least once: linked, so they must stay linked. */
  const everLinked = new Set<string>();
  /** Rows the self-check corrupts on purpose (--inject-violations). */
  const corrupted = new Set<string>();
  /**
   * What each live worker process believes, from its events: its server id and
   * the devices it holds, at which epoch. A process that exits or is killed
   * believes nothing any more.
   */
  const beliefs = new Map<string, { serverId: string | null; devices: Map<string, number> }>();
  const believe = (event: FleetEvent) => {
    if (["spawned", "killed", "exited"].includes(event.type)) {
      beliefs.delete(event.worker);
      return;
    }
    let belief = beliefs.get(event.worker);
    if (!belief) beliefs.set(event.worker, belief = { serverId: null, devices: new Map() });
    if (event.type === "heartbeat") belief.serverId = String(event.serverId);
    else if (event.type === "session_started") {
      belief.devices.set(String(event.deviceId), Number(event.epoch));
    } else if (
      event.type === "session_dropped" &&
      belief.devices.get(String(event.deviceId)) === Number(event.epoch)
    ) belief.devices.delete(String(event.deviceId));
  };

  try {
    await db`update public.assignment_settings
             set heartbeat_timeout = make_interval(secs => ${options.heartbeatTimeoutS})`;
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
      onEvent: believe,
    });
    log(
      `chaos ${tag}: seed ${options.seed}, ${options.workers} workers (capacity ${capacity}), ` +
        `${options.devices} devices of ${options.users} users, ${options.seconds} s`,
    );
    await fleet.start(options.workers, 30_000);
    const deadline = started + options.seconds * 1000;
    const f = fleet;

    // --- snapshots: invariants 3 and 4, and stale probe values landing in rows ----------
    const orphanSince = new Map<string, { since: number; withRoom: number | null }>();
    const lastEpoch = new Map<string, number>();
    const violatedOrphans = new Set<string>();
    const staleLanded = new Set<string>();
    /** Each kind of session violation is reported once per device. */
    const sessionReported = new Set<string>();
    const violateOnce = (invariant: Invariant, deviceId: string, kind: string, message: string) => {
      if (sessionReported.has(`${kind}:${deviceId}`)) return;
      sessionReported.add(`${kind}:${deviceId}`);
      violate(invariant, message);
    };
    /** Since when a device the database calls connected on a live server has had no live holder. */
    const unheldSince = new Map<string, number>();
    // A SIGKILLed server is live to the database until its heartbeat timeout,
    // and its devices wait for the next claim after that: a linked device may
    // be held by nobody that long, never longer (a restart under the same name,
    // or a self-fence the database did not see, used to make it forever).
    const HOLDER_GRACE_MS = options.heartbeatTimeoutS * 1_000 + options.workerPollMs + 2_000;
    const heldBy = (row: SnapshotRow) =>
      [...beliefs.values()].some((b) =>
        b.serverId === row.assigned_server_id &&
        b.devices.get(row.id) === Number(row.assignment_epoch)
      );
    const checkSession = (row: SnapshotRow): void => {
      const linkedNow = row.status === "connected" || row.status === "reconnecting";
      if (row.status === "connected") everLinked.add(row.id);
      if (linkedNow && !row.has_creds) {
        violateOnce(
          "session_kept",
          row.id,
          "creds",
          `device ${row.id} is ${row.status} without its stored creds`,
        );
      }
      if (everLinked.has(row.id) && !linkedNow) {
        violateOnce(
          "session_kept",
          row.id,
          "unlinked",
          `device ${row.id} was linked, now ${row.status} (last_error ${row.last_error})`,
        );
      }
      if (row.status === "connected" && row.on_live_server && !heldBy(row)) {
        const key = `${row.id}@${row.assignment_epoch}`;
        const since = unheldSince.get(key) ?? row.at.getTime();
        unheldSince.set(key, since);
        if (row.at.getTime() - since > HOLDER_GRACE_MS && !corrupted.has(row.id)) {
          violateOnce(
            "session_held",
            key,
            "unheld",
            `device ${row.id}, connected at epoch ${row.assignment_epoch} on a live server, ` +
              `has had no live worker holding it for over ${HOLDER_GRACE_MS} ms`,
          );
        }
      } else unheldSince.delete(`${row.id}@${row.assignment_epoch}`);
      if (row.probe_landed) {
        violateOnce(
          "session_write",
          row.id,
          "probe",
          `a stale session probe's entry landed on ${row.id}`,
        );
      }
    };

    /**
     * Invariant 6: when two or more live workers believe they hold one device,
     * try each one's server and epoch against the database's own fence
     * (device_session_read, which changes nothing), with the row locked so
     * that all of them meet the same row. At most one may pass.
     */
    const checkHolders = async (): Promise<void> => {
      const believers = new Map<string, { worker: string; serverId: string; epoch: number }[]>();
      for (const [worker, belief] of beliefs) {
        if (!belief.serverId) continue;
        for (const [deviceId, epoch] of belief.devices) {
          const list = believers.get(deviceId) ?? [];
          list.push({ worker, serverId: belief.serverId, epoch });
          believers.set(deviceId, list);
        }
      }
      for (const [deviceId, list] of believers) {
        if (list.length < 2 || !baseline.has(deviceId)) continue;
        sessions.holderChecks++;
        const accepted = await db.begin(async (tx) => {
          await tx`select from public.devices where id = ${deviceId} for update`;
          const passed: string[] = [];
          for (const b of list) {
            const ok = await tx.savepoint((sp) =>
              sp`select device_assignment.device_session_read(
                   ${deviceId}, ${b.serverId}, ${b.epoch}, 'creds', array['creds'])`
            ).then(() => true, (error) => {
              if (!String(error.message).includes("fenced")) log(`holder check: ${error.message}`);
              return false;
            });
            if (ok) passed.push(`${b.worker} at epoch ${b.epoch}`);
          }
          return passed;
        }).catch((error) => {
          log(`holder check failed: ${error.message}`);
          return [] as string[];
        });
        if (accepted.length > 1) {
          violate(
            "session_holder",
            `device ${deviceId}: the database accepts ${accepted.join(" and ")} at once`,
          );
        }
      }
    };

    const checkSnapshot = (
      rows: SnapshotRow[],
    ): void => {
      const seen = new Set(rows.map((r) => r.id));
      for (const id of allDeviceIds) {
        if (!seen.has(id)) violate("rows_intact", `device ${id} disappeared`);
      }
      const now = rows[0]?.at.getTime() ?? Date.now();
      for (const row of rows) {
        const base = baseline.get(row.id)!;
        if (row.user_id !== base.userId || row.device_name !== base.name) {
          violate("rows_intact", `device ${row.id} changed owner or name`);
        }
        const epoch = Number(row.assignment_epoch);
        const before = lastEpoch.get(row.id);
        if (before !== undefined && epoch < before) {
          violate("rows_intact", `device ${row.id} epoch went back from ${before} to ${epoch}`);
        }
        lastEpoch.set(row.id, epoch);
        checkSession(row);
        if (row.stale_probe && !staleLanded.has(row.id)) {
          staleLanded.add(row.id);
          violate("stale_write", `a stale probe's QR landed on ${row.id}`);
        }

        const episode = orphanSince.get(row.id);
        if (row.orphaned) {
          if (!episode) orphanSince.set(row.id, { since: now, withRoom: row.room ? now : null });
          else if (!row.room) episode.withRoom = null;
          else if (episode.withRoom === null) episode.withRoom = now;
          const current = orphanSince.get(row.id)!;
          longestOrphanMs = Math.max(longestOrphanMs, now - current.since);
          if (current.withRoom !== null) {
            const withRoom = now - current.withRoom;
            if (withRoom > longestOrphanWithRoomMs) longestOrphanWithRoomMs = withRoom;
            if (withRoom > boundFor(options) && !violatedOrphans.has(row.id + current.since)) {
              violatedOrphans.add(row.id + current.since);
              violate(
                "orphan_bound",
                `device ${row.id} orphaned ${withRoom} ms while a live server had room`,
              );
            }
          }
        } else if (episode) {
          orphanSince.delete(row.id);
          orphanEpisodes++;
        }
      }
    };

    let lastRows: SnapshotRow[] = [];
    const snapshotLoop = (async () => {
      while (!stop.signal.aborted) {
        const rows = await db<SnapshotRow[]>`
          with room as (
            select exists (
              select from device_assignment.live_servers l
              where l.max_capacity is null
                 or l.max_capacity > (select count(*) from public.devices x
                                      where x.assigned_server_id = l.id and x.status = 'connecting')
            ) as room
          )
          select d.id, d.user_id, d.device_name, d.status, d.assignment_epoch,
                 coalesce(d.qr_code like 'chaos-stale-%', false) as stale_probe,
                 exists (select from device_assignment.orphaned_devices o where o.id = d.id) as orphaned,
                 room.room, d.assigned_server_id, d.last_error, d.qr_code is not null as has_qr,
                 exists (select from device_assignment.device_sessions s
                         where s.device_id = d.id and s.type = 'creds') as has_creds,
                 exists (select from device_assignment.device_sessions s
                         where s.device_id = d.id and s.type = 'chaos-probe') as probe_landed,
                 exists (select from device_assignment.live_servers l
                         where l.id = d.assigned_server_id) as on_live_server,
                 clock_timestamp() as at
          from public.devices d, room
          where d.id = any(${allDeviceIds}::uuid[])`.catch((error) => {
          log(`snapshot failed: ${error.message}`);
          return null;
        });
        if (rows) {
          snapshots++;
          checkSnapshot(rows);
          lastRows = rows;
          await checkHolders();
        }
        await sleep(200, stop.signal);
      }
    })();

    // --- users: poll their QRs, ask for reassignment when told to ------------------------
    const checkAnswer = (fn: string, answer: Answer) => {
      const allowed = fn === "get-device-qr" ? [200, 202, 429, 503] : [200, 409, 429, 503];
      const contract503 = ["no_active_servers", "database_unavailable"];
      if (
        !allowed.includes(answer.status) ||
        (answer.status === 503 && !contract503.includes(answer.body?.error?.code ?? ""))
      ) {
        violate("api_answers", `${fn} → ${answer.status} ${answer.text.slice(0, 200)}`);
      }
    };

    const linkTarget = Math.ceil(options.devices / 2);
    const userLoops = owners.map(async (owner) => {
      while (!stop.signal.aborted && Date.now() < deadline) {
        const deviceId = pick(owner.devices);
        const wait = random() < 0.2 ? 1 : 0;
        const qr = await callFunction(stack, "get-device-qr", owner.token, {
          device_id: deviceId,
          wait,
        });
        count("get-device-qr", String(qr.status));
        checkAnswer("get-device-qr", qr);
        const state = qr.body?.status ?? "";
        if (["not_connecting", "qr_timeout", "error"].includes(state) || random() < 0.05) {
          const again = await callFunction(stack, "reassign-device", owner.token, {
            device_id: deviceId,
          });
          count("reassign-device (user)", String(again.status));
          checkAnswer("reassign-device", again);
        }
        // The user scans: the device links and leaves the pairing churn, its
        // session meets the faults instead. About half the devices get linked.
        if (
          state === "ready" && sessions.linked < linkTarget && random() < 0.2 &&
          Date.now() < deadline - 3_000
        ) {
          bump(faults, "user scans a QR");
          if (await f.scan(deviceId, 3_000).catch(() => null)) sessions.linked++;
        }
        await sleep(between(100, 400), stop.signal);
      }
    });

    // --- faults ------------------------------------------------------------------------
    const pending: Promise<unknown>[] = [];
    const later = (ms: number, action: () => Promise<unknown>) =>
      pending.push(sleep(ms).then(action).catch((error) => log(`delayed fault: ${error}`)));
    const alive = () => f.list().filter((w) => w.state === "running");
    let extraWorkers = 0;

    const operatorCall = async (): Promise<void> => {
      const roll = random();
      let body: Record<string, unknown>;
      if (roll < 0.35) body = { scope: "inactive" };
      else if (roll < 0.6) body = { scope: "all_connecting", dry_run: !options.exclusive };
      else body = { scope: "device", device_id: pick(allDeviceIds) };
      const answer = await callFunction(stack, "reassign-device", stack.secretKey, body, {
        operator: true,
      });
      const label = `${body.scope}${body.dry_run ? " (dry run)" : ""}`;
      bump(faults, `operator reassign ${label}`);
      count(`reassign-device (operator ${label})`, String(answer.status));
      if (answer.status >= 500 && answer.status !== 503) {
        violate("api_answers", `operator ${label} → ${answer.status} ${answer.text.slice(0, 200)}`);
      }
    };

    /** The server a device was last given to before its current epoch, with that epoch. */
    const previousOwner = async (deviceId: string) => {
      const [row] = await db`
        select e.to_server_id, e.epoch, d.assignment_epoch
        from public.devices d
        join public.device_assignment_events e on e.device_id = d.id
        where d.id = ${deviceId} and e.epoch < d.assignment_epoch and e.to_server_id is not null
        order by e.epoch desc limit 1`;
      return row;
    };

    /**
     * Writes a session entry as the previous owner of a device at its previous
     * epoch, preferring linked devices: must be fenced, and never land.
     */
    const staleSessionProbe = async (): Promise<void> => {
      const deviceId = everLinked.size > 0 && random() < 0.7
        ? pick([...everLinked])
        : pick(allDeviceIds);
      const row = await previousOwner(deviceId);
      if (!row) return;
      sessions.staleProbes.attempted++;
      const answer = await rpc(stack, "device_session_write", {
        p_device_id: deviceId,
        p_server_id: row.to_server_id,
        p_epoch: Number(row.epoch),
        p_entries: [{ type: "chaos-probe", id: crypto.randomUUID(), value: "stale" }],
      });
      bump(faults, "stale session write probe");
      if (answer.status === 409 && answer.body?.message === "fenced") sessions.staleProbes.fenced++;
      else if (answer.status === 200) {
        violate(
          "session_write",
          `session write at epoch ${row.epoch} accepted for ${deviceId} (now ${row.assignment_epoch})`,
        );
      } else {
        bump(sessions.staleProbes.other, `${answer.status} ${answer.body?.message ?? ""}`.trim());
      }
    };

    /** Writes as the previous owner of a device at its previous epoch: must be fenced. */
    const staleProbe = async (): Promise<void> => {
      if (random() < 0.5) return await staleSessionProbe();
      const deviceId = pick(allDeviceIds);
      const row = await previousOwner(deviceId);
      if (!row) return;
      staleProbes.attempted++;
      const answer = await rpc(stack, "publish_device_qr", {
        p_device_id: deviceId,
        p_server_id: row.to_server_id,
        p_epoch: Number(row.epoch),
        p_qr: `chaos-stale-${crypto.randomUUID()}`,
        p_expires_at: new Date(Date.now() + 60_000).toISOString(),
      });
      bump(faults, "stale write probe");
      if (answer.status === 409 && answer.body?.message === "fenced") staleProbes.fenced++;
      else if (answer.status === 200) {
        violate(
          "stale_write",
          `publish at epoch ${row.epoch} accepted for ${deviceId} (now ${row.assignment_epoch})`,
        );
      } else {
        bump(staleProbes.other, `${answer.status} ${answer.body?.message ?? ""}`.trim());
      }
    };

    const inject = async () => {
      const [a, b, c] = allDeviceIds;
      for (const id of allDeviceIds.slice(0, 5)) corrupted.add(id);
      // Disconnected too, so no worker's next QR overwrites it before a snapshot sees it.
      await db`update public.devices set qr_code = 'chaos-stale-injected', status = 'disconnected'
               where id = ${a}`;
      await db`
        insert into public.device_assignment_events (device_id, from_server_id, to_server_id,
                                                     epoch, reason, actor)
        select ${b}, null, gen_random_uuid(), assignment_epoch, 'operator', 'chaos self-check'
        from public.devices where id = ${b}`;
      await db`update public.devices set assignment_epoch = assignment_epoch - 1 where id = ${c}`;
      bump(faults, "self-check corruptions (expected violations)", 3);
      const [, , , d, e] = allDeviceIds;
      if (e) {
        // A linked device whose creds are gone, and a session entry nobody was allowed to write.
        await db`delete from device_assignment.device_sessions where device_id = ${d}`;
        await db`update public.devices set status = 'connected' where id = ${d}`;
        await db`insert into device_assignment.device_sessions (device_id, type, id, value)
                 values (${e}, 'chaos-probe', 'injected', 'stale')`;
        bump(faults, "self-check corruptions (expected violations)", 2);
      }
    };
    let injected = !options.injectViolations;
    let linkedPartitioned = false;
    /**
     * Once a third of the way in: the server holding the most linked devices
     * loses its control plane without fencing itself, past its lease, so its
     * sessions fail over while it goes on writing keys for them.
     */
    const partitionLinkedHolder = async () => {
      const linkedHeld = (worker: string) =>
        [...(beliefs.get(worker)?.devices.keys() ?? [])].filter((id) => everLinked.has(id)).length;
      const victim = alive().map((w) => w.name).sort((a, b) => linkedHeld(b) - linkedHeld(a))[0];
      if (!victim || linkedHeld(victim) === 0) return;
      linkedPartitioned = true;
      await f.partition(victim, { selfFencing: false });
      bump(faults, "partition of the server holding most linked devices (not self-fencing)");
      later(options.heartbeatTimeoutS * 1_500 + 4 * options.workerPollMs, async () => {
        if (f.info(victim).state === "partitioned") {
          await f.heal(victim);
          bump(faults, "partition healed");
        }
      });
    };
    let outageDone = false;

    /**
     * Stops PostgreSQL, probes the functions every 250 ms while it is down (each
     * probe on its own, so one that hangs does not hide the others), starts it
     * again and times the first 200.
     */
    const databaseOutage = async (target: PrivateStack) => {
      const owner = owners[0];
      const probe = () =>
        callFunction(stack, "get-device-qr", owner.token, { device_id: owner.devices[0] }, {
          timeoutMs: options.recoveryBoundMs,
        });
      await target.stopDatabase();
      const downAt = Date.now();
      bump(faults, "PostgreSQL stopped");
      log(`database down for ${options.outageSeconds} s`);
      const whileDown: Promise<void>[] = [];
      while (Date.now() < downAt + options.outageSeconds * 1000) {
        const sentAt = Date.now();
        whileDown.push(
          probe().then((answer) => {
            const key = answer.status === 0
              ? `no answer within ${options.recoveryBoundMs} ms`
              : `${answer.status} ${answer.body?.error?.code ?? ""}`.trim();
            bump(outage.answersWhileDown, key);
            const ok = answer.status === 503 &&
              answer.body?.error?.code === "database_unavailable" &&
              Boolean(answer.retryAfter);
            // A request sent just before the stop may still have been served.
            if (!ok && !(answer.status === 200 && sentAt - downAt < 500)) {
              violate(
                "outage",
                `get-device-qr sent ${sentAt - downAt} ms into the outage: ${key} ` +
                  `after ${Date.now() - sentAt} ms ${answer.text.slice(0, 120)}`,
              );
            }
          }),
        );
        await sleep(250);
      }
      await target.startDatabase();
      const upAt = Date.now();
      outage.downMs = upAt - downAt;
      bump(faults, "PostgreSQL restarted");
      const recovery: Promise<void>[] = [];
      while (outage.recoveredAfterMs === null && Date.now() < upAt + options.recoveryBoundMs) {
        recovery.push(
          probe().then((answer) => {
            if (answer.status === 200 && outage.recoveredAfterMs === null) {
              outage.recoveredAfterMs = Date.now() - upAt;
            }
          }),
        );
        await sleep(250);
      }
      await Promise.all([...whileDown, ...recovery]);
      if (outage.recoveredAfterMs === null) {
        violate("outage", `no 200 within ${options.recoveryBoundMs} ms of the database's return`);
      }
    };

    const faultLoop = (async () => {
      while (Date.now() < deadline) {
        if (!injected && Date.now() > started + options.seconds * 500) {
          injected = true;
          await inject();
        }
        if (!linkedPartitioned && Date.now() > started + options.seconds * 330) {
          await partitionLinkedHolder().catch((error) => log(`linked partition: ${error}`));
        }
        if (
          privateStack && options.dbRestart && !outageDone &&
          Date.now() > started + options.seconds * 400
        ) {
          outageDone = true;
          await databaseOutage(privateStack);
          continue;
        }
        await sleep(between(500, 1_500));
        if (Date.now() >= deadline) break;
        const running = alive();
        const roll = random();
        try {
          if (roll < 0.2 && running.length >= 2) {
            const victim = pick(running).name;
            await f.kill(victim);
            bump(faults, "worker SIGKILL");
            later(between(1_000, options.heartbeatTimeoutS * 2_500), async () => {
              if (Date.now() < deadline) {
                await f.restart(victim);
                bump(faults, "killed worker restarted");
              }
            });
          } else if (roll < 0.35 && running.length >= 2) {
            const victim = pick(running).name;
            const selfFencing = random() < 0.5;
            await f.partition(victim, { selfFencing });
            bump(faults, selfFencing ? "partition (self-fencing)" : "partition (not self-fencing)");
            // Heals late: often after the lease lapsed and the devices moved on.
            later(between(500, options.heartbeatTimeoutS * 2_000), async () => {
              if (f.info(victim).state === "partitioned") {
                await f.heal(victim);
                bump(faults, "partition healed");
              }
            });
          } else if (roll < 0.45 && running.length >= 2) {
            const victim = pick(running).name;
            await f.restart(victim);
            bump(faults, "graceful restart");
          } else if (roll < 0.5 && extraWorkers < 2) {
            f.add();
            extraWorkers++;
            bump(faults, "worker added");
          } else if (roll < 0.75) {
            await operatorCall();
          } else {
            await staleProbe();
          }
        } catch (error) {
          bump(faults, "fault skipped (fleet busy)");
          log(`fault skipped: ${error instanceof Error ? error.message : error}`);
        }
      }
    })();

    await faultLoop;
    await Promise.all(userLoops);
    await Promise.all(pending);
    // Let the fleet settle with every worker healed, then take the last snapshots.
    for (const w of f.list()) {
      if (w.state === "partitioned") await f.heal(w.name).catch(() => {});
    }
    // Linked devices of a server that is down get back on a live one within the
    // failover bound: its lease lapses, a claim takes the session, a resume ends.
    const settleStart = Date.now();
    const settleBound = options.heartbeatTimeoutS * 1_000 + 4 * options.workerPollMs + 5_000;
    await sleep(Math.min(3_000, options.heartbeatTimeoutS * 500));
    const settled = (rows: SnapshotRow[]) =>
      rows.filter((r) =>
        everLinked.has(r.id) && r.status === "connected" && r.on_live_server && !r.has_qr
      );
    while (
      Date.now() - settleStart < settleBound &&
      // The self-check's fake linked device never settles; no need to wait for it.
      settled(lastRows).length < [...everLinked].filter((id) => !corrupted.has(id)).length
    ) await sleep(250);
    stop.abort();
    await snapshotLoop;
    sessions.settleMs = Date.now() - settleStart;
    const atEnd = new Set(settled(lastRows).map((r) => r.id));
    sessions.connectedAtEnd = atEnd.size;
    sessions.linkedAtEnd = everLinked.size;
    // Held by a live worker too: a server that restarted keeps its id, and a
    // device the database calls connected there must still have its socket.
    const held = new Map<string, string>();
    for (const [worker, belief] of beliefs) {
      for (const [deviceId, epoch] of belief.devices) held.set(`${deviceId}@${epoch}`, worker);
    }
    for (const row of lastRows.filter((r) => everLinked.has(r.id))) {
      if (!atEnd.has(row.id)) {
        violate(
          "session_kept",
          `device ${row.id} was linked; ${sessions.settleMs} ms after the faults it is ${row.status}` +
            `${row.on_live_server ? "" : " on no live server"}${row.has_qr ? " with a QR" : ""}`,
        );
      } else if (!held.has(`${row.id}@${row.assignment_epoch}`)) {
        const serving = [...beliefs].find(([, b]) => b.serverId === row.assigned_server_id)?.[0];
        violate(
          "session_held",
          `device ${row.id} is connected at epoch ${row.assignment_epoch} on a live server, but ` +
            `${
              serving
                ? `${serving}, the process of that server, does not hold it`
                : "no live worker holds it"
            }`,
        );
      }
    }
  } finally {
    stop.abort();
    if (fleet) await fleet.stopAll(3_000).catch((error) => log(`stopAll: ${error}`));
    await db`update public.assignment_settings set heartbeat_timeout = ${previous.heartbeat_timeout}`
      .catch((error) => log(`settings not restored: ${error.message}`));
  }

  // --- the audit trail: invariants 1 and 2 ------------------------------------------------
  const events = await db<
    { device_id: string; to_server_id: string | null; epoch: string; reason: string; at: Date }[]
  >`
    select device_id, to_server_id, epoch, reason, created_at as at
    from public.device_assignment_events
    where device_id = any(${allDeviceIds}::uuid[]) and created_at >= ${t0}
    order by id`;
  const reassignments: Record<string, number> = {};
  const byDevice = new Map<string, (typeof events)[number][]>();
  for (const event of events) {
    bump(reassignments, event.reason);
    byDevice.set(event.device_id, [...(byDevice.get(event.device_id) ?? []), event]);
  }
  const finalRows = await db<{ id: string; assignment_epoch: string }[]>`
    select id, assignment_epoch from public.devices where id = any(${allDeviceIds}::uuid[])`;
  if (finalRows.length !== allDeviceIds.length) {
    violate("rows_intact", `${allDeviceIds.length - finalRows.length} devices missing at the end`);
  }
  for (const row of finalRows) {
    const trail = byDevice.get(row.id) ?? [];
    const owners = new Map<string, Set<string | null>>();
    let last = -Infinity;
    for (const event of trail) {
      const epoch = Number(event.epoch);
      if (epoch <= last) {
        violate("single_owner", `device ${row.id}: epoch ${epoch} audited after ${last}`);
      }
      last = Math.max(last, epoch);
      owners.set(event.epoch, (owners.get(event.epoch) ?? new Set()).add(event.to_server_id));
    }
    for (const [epoch, servers] of owners) {
      if (servers.size > 1) {
        violate(
          "single_owner",
          `device ${row.id}: epoch ${epoch} given to ${servers.size} servers`,
        );
      }
    }
    if (trail.length > 0 && Number(row.assignment_epoch) !== last) {
      violate(
        "single_owner",
        `device ${row.id}: row epoch ${row.assignment_epoch}, last audited ${last} (an unaudited change)`,
      );
    }
  }

  // A worker's publish that went through must have been made at the epoch the
  // database held: none may start after the database moved the device on.
  const MARGIN_MS = 100;
  let publishesAccepted = 0;
  let publishesFenced = 0;
  const mine = new Set(allDeviceIds);
  for (const event of fleet?.events ?? []) {
    if (!mine.has(String(event.deviceId))) continue;
    if (event.type === "publish_rejected" && event.code === "fenced") publishesFenced++;
    if (event.type !== "published") continue;
    publishesAccepted++;
    const epoch = Number(event.epoch);
    const attemptedAt = Number(event.attemptedAt);
    const newer = (byDevice.get(String(event.deviceId)) ?? []).find((e) =>
      Number(e.epoch) > epoch && e.at.getTime() + MARGIN_MS < attemptedAt
    );
    if (newer) {
      violate(
        "stale_write",
        `${event.worker} published ${event.deviceId} at epoch ${epoch}, ` +
          `${attemptedAt - newer.at.getTime()} ms after epoch ${newer.epoch} was audited`,
      );
    }
  }

  // Invariant 7 from the workers' side: a session write the database accepted
  // must carry the server its epoch was audited to, and must not start after a
  // newer epoch was audited (the same margin as for publishes).
  sessions.failovers = reassignments["session_failover"] ?? 0;
  const resumes = new Set<string>();
  for (const event of fleet?.events ?? []) {
    const deviceId = String(event.deviceId);
    if (!mine.has(deviceId)) continue;
    const key = `${event.worker}:${deviceId}:${event.epoch}`;
    if (event.type === "session_started" && event.resume === true) {
      sessions.resumesStarted++;
      resumes.add(key);
    } else if (
      event.type === "status_reported" && event.status === "connected" && resumes.has(key)
    ) sessions.resumesConnected++;
    if (event.type !== "session_write") continue;
    if (!event.accepted) {
      if (event.code === "fenced") sessions.writesFenced++;
      else sessions.writesOther++;
      continue;
    }
    sessions.writesAccepted++;
    const epoch = Number(event.epoch);
    const attemptedAt = Number(event.attemptedAt);
    const trail = byDevice.get(deviceId) ?? [];
    const owner = trail.find((e) => Number(e.epoch) === epoch);
    if (!owner || owner.to_server_id !== event.serverId) {
      violate(
        "session_write",
        `${event.worker} (server ${event.serverId}) wrote ${deviceId}'s session at epoch ${epoch}, ` +
          `which the audit trail gives to ${owner ? owner.to_server_id : "nobody"}`,
      );
      continue;
    }
    const newer = trail.find((e) =>
      Number(e.epoch) > epoch && e.at.getTime() + MARGIN_MS < attemptedAt
    );
    if (newer) {
      violate(
        "session_write",
        `${event.worker} wrote ${deviceId}'s session at epoch ${epoch}, ` +
          `${attemptedAt - newer.at.getTime()} ms after epoch ${newer.epoch} was audited`,
      );
    }
  }

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
    faults,
    requests,
    staleProbes,
    outage,
    reassignments,
    publishesAccepted,
    publishesFenced,
    sessions,
    snapshots,
    longestOrphanMs,
    longestOrphanWithRoomMs,
    orphanEpisodes,
    violations,
    report: "",
  };
  result.report = renderReport(result, boundFor(options));
  await Deno.mkdir(options.reportPath.replace(/\/[^/]*$/, "") || ".", { recursive: true });
  await Deno.writeTextFile(options.reportPath, result.report);
  return result;
}

export function violationCount(result: ChaosResult): number {
  return Object.values(result.violations).reduce((sum, list) => sum + list.length, 0);
}

function assertLoopback(stack: Stack): void {
  for (const url of [stack.url, stack.dbUrl]) {
    const host = new URL(url.replace(/^postgres(ql)?:/, "http:")).hostname;
    if (!["127.0.0.1", "localhost", "::1", "[::1]"].includes(host)) {
      throw new Error(`chaos runs on loopback only; refusing ${host}`);
    }
  }
}

async function callFunction(
  stack: Stack,
  name: string,
  token: string,
  body: Record<string, unknown>,
  { operator = false, timeoutMs = 30_000 }: { operator?: boolean; timeoutMs?: number } = {},
): Promise<Answer> {
  try {
    const response = await fetch(`${stack.url}/functions/v1/${name}`, {
      method: "POST",
      headers: {
        apikey: operator ? stack.secretKey : stack.publishableKey,
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
      },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await response.text();
    let parsed: AnswerBody | null = null;
    try {
      parsed = JSON.parse(text);
    } catch { /* an image, or not JSON */ }
    return {
      status: response.status,
      body: parsed,
      text,
      retryAfter: response.headers.get("retry-after"),
    };
  } catch (error) {
    return { status: 0, body: null, text: String(error) };
  }
}

async function rpc(
  stack: Stack,
  name: string,
  args: Record<string, unknown>,
): Promise<Omit<Answer, "text">> {
  const response = await fetch(`${stack.url}/rest/v1/rpc/${name}`, {
    method: "POST",
    headers: { apikey: stack.secretKey, "content-type": "application/json" },
    body: JSON.stringify(args),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

function table(rows: [string, string | number][], head: [string, string]): string {
  if (rows.length === 0) return "_none_\n";
  return [`| ${head[0]} | ${head[1]} |`, "|---|---:|", ...rows.map(([k, v]) => `| ${k} | ${v} |`)]
    .join("\n") + "\n";
}

export function renderReport(r: ChaosResult, orphanBoundMs: number): string {
  const total = violationCount(r);
  const sorted = (o: Record<string, number>) =>
    Object.entries(o).sort((a, b) => b[1] - a[1]) as [string, number][];
  const requestRows: [string, string][] = Object.entries(r.requests).map(([what, byStatus]) => [
    what,
    Object.entries(byStatus).sort().map(([s, n]) => `${s}: ${n}`).join(", "),
  ]);
  const requestTotal = Object.values(r.requests)
    .flatMap((byStatus) => Object.values(byStatus))
    .reduce((a, b) => a + b, 0);
  const lines = [
    `# Chaos report`,
    "",
    `${total === 0 ? "**0 violations**" : `**${total} violations**`} in ${
      (r.durationMs / 1000).toFixed(1)
    } s (started ${r.startedAt}, seed ${r.options.seed}).`,
    "",
    `Fleet: ${r.options.workers} workers, ${r.options.devices} devices of ${r.options.users} users; ` +
    `heartbeat timeout ${r.options.heartbeatTimeoutS} s, worker poll ${r.options.workerPollMs} ms; ` +
    `orphan bound ${orphanBoundMs} ms; bulk all_connecting ${
      r.options.exclusive ? "real" : "dry run only (shared database)"
    }; ${r.options.dbRestart || r.options.privateStack ? "private stack" : "shared stack"}${
      r.options.dbRestart ? `, PostgreSQL stopped for ${r.options.outageSeconds} s` : ""
    }.`,
    "",
    "## Invariants",
    "",
    "| invariant | violations |",
    "|---|---:|",
    ...Object.entries(INVARIANTS).map(([key, label]) =>
      key === "outage" && !r.options.dbRestart
        ? `| ${label} | not run (no --db-restart) |`
        : `| ${label} | ${r.violations[key as Invariant].length} |`
    ),
    "",
    ...Object.entries(r.violations).flatMap(([key, list]) =>
      list.length === 0 ? [] : [`### ${key}`, "", ...list.slice(0, 20).map((v) => `- ${v}`), ""]
    ),
    "## Faults injected",
    "",
    table(sorted(r.faults), ["fault", "count"]),
    "## Requests",
    "",
    `${requestTotal} HTTP requests to the functions.`,
    "",
    table(requestRows, ["request", "statuses"]),
    ...(r.options.dbRestart
      ? [
        "## Database outage",
        "",
        `- PostgreSQL down for ${r.outage.downMs} ms`,
        `- get-device-qr while down: ${JSON.stringify(r.outage.answersWhileDown)}`,
        `- first 200 after the database returned: ${
          r.outage.recoveredAfterMs === null ? "never" : `${r.outage.recoveredAfterMs} ms`
        }`,
        "",
      ]
      : []),
    "## Fencing",
    "",
    `- worker publishes accepted: ${r.publishesAccepted}, fenced: ${r.publishesFenced}`,
    `- stale write probes: ${r.staleProbes.attempted}, fenced: ${r.staleProbes.fenced}` +
    (Object.keys(r.staleProbes.other).length
      ? `, other answers: ${JSON.stringify(r.staleProbes.other)}`
      : ""),
    "",
    "## Linked sessions",
    "",
    `- devices linked by a scan: ${r.sessions.linked}; session failovers (audited): ${r.sessions.failovers}`,
    `- resumes started: ${r.sessions.resumesStarted}, connected again: ${r.sessions.resumesConnected}`,
    `- session writes by workers accepted: ${r.sessions.writesAccepted}, fenced: ${r.sessions.writesFenced}` +
    (r.sessions.writesOther ? `, other failures: ${r.sessions.writesOther}` : ""),
    `- stale session write probes: ${r.sessions.staleProbes.attempted}, fenced: ${r.sessions.staleProbes.fenced}` +
    (Object.keys(r.sessions.staleProbes.other).length
      ? `, other answers: ${JSON.stringify(r.sessions.staleProbes.other)}`
      : ""),
    `- moments two live workers believed they held one device (each tried against the fence): ${r.sessions.holderChecks}`,
    `- linked devices connected on a live server without a QR at the end: ${r.sessions.connectedAtEnd}/${r.sessions.linkedAtEnd} (settled ${r.sessions.settleMs} ms after the faults)`,
    "",
    "## Reassignments (audit trail of our devices)",
    "",
    table(sorted(r.reassignments), ["reason", "events"]),
    "## Orphans",
    "",
    `- database snapshots: ${r.snapshots} (every 200 ms)`,
    `- orphan episodes closed: ${r.orphanEpisodes}`,
    `- longest orphan time: ${r.longestOrphanMs} ms (any)`,
    `- longest orphan time while a live server had room: ${r.longestOrphanWithRoomMs} ms (bound ${orphanBoundMs} ms)`,
    "",
  ];
  return lines.join("\n");
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
