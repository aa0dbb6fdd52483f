/**
 * What a chaos run is made of: its options, the invariants it checks, the
 * figures it reports, and the calls users and operators make during it.
 * Shared by chaos.ts (the run), invariants.ts, faults.ts and report.ts.
 */
import type { Stack } from "../e2e/harness.ts";
import type { IncidentFigures } from "./incidents.ts";

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
  /** Break WhatsApp for every worker once, 60% in, for this long (0: never; incidents.ts). */
  whatsappOutageSeconds: number;
  /** `assignment_settings.incident_window` for the run, seconds; restored after. */
  incidentWindowS: number;
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
  whatsappOutageSeconds: 6,
  incidentWindowS: 3,
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
  fleet_incident:
    "9. WhatsApp failing everywhere is an incident: a held device moves at most once, never runs out of budget for it, and shows a QR within one poll of its end",
  failure_retried: "9b. a failure on one server alone is retried on another",
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
  incidents: IncidentFigures;
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

/** Violations of every invariant, the self-check's included. */
export function violationCount(result: ChaosResult): number {
  return Object.values(result.violations).reduce((sum, list) => sum + list.length, 0);
}

/** Orphan bound: a worker poll picks an orphan up; maintenance every 10 s backs it up. */
export function boundFor(options: ChaosOptions): number {
  return options.orphanBoundMs > 0 ? options.orphanBoundMs : 4 * options.workerPollMs + 2_500;
}

/** mulberry32: a small seeded generator, so a run can be replayed with --seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

export function bump(counts: Record<string, number>, key: string, by = 1): void {
  counts[key] = (counts[key] ?? 0) + by;
}

/** What the functions and the Data API answer, as far as the run reads it. */
/** One device as a database snapshot sees it, with the invariants' inputs. */
export interface SnapshotRow {
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
  /** Failed with the code of an open fleet incident, which holds it. */
  held: boolean;
  at: Date;
}

export interface AnswerBody {
  status?: string;
  message?: string;
  error?: { code?: string };
}

export interface Answer {
  status: number;
  body: AnswerBody | null;
  text: string;
  retryAfter?: string | null;
}

export interface Owner {
  id: string;
  token: string;
  devices: string[];
}

export interface Baseline {
  userId: string;
  name: string;
}

export async function callFunction(
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

export async function rpc(
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
