/**
 * Failures of WhatsApp itself in a chaos run, and invariants 9 and 9b.
 *
 * - A fleet-wide outage: once, 60% of the way in, every worker's simulated
 *   WhatsApp fails each pairing attempt with `version_outdated` for
 *   `whatsappOutageSeconds`, then is mended. The database must see a fleet
 *   incident (or several: one that goes quiet while WhatsApp is still broken
 *   ends, and the next failures open another). Invariant 9: each device an
 *   incident held is moved at most once while it lasts (operators' own moves
 *   aside), no device it held ever reaches `max_reassignments_exceeded`, and
 *   every device released after WhatsApp was mended is on a server again
 *   within one worker poll (two, and a second of scheduling on a shared
 *   machine): claimed, or healed by its owner's poll. When its QR then shows
 *   is reported, not judged: a kill or a partition in between delays it, as
 *   it should.
 * - A failure on one server alone: a quarter of the way in, one worker's
 *   pairing attempt fails with `connection_failure`; the maintenance pass
 *   (run here, as pg_cron would) must move the device to another live
 *   server, audited `server_failure` (invariant 9b).
 */
import type postgres from "postgres";
import type { FaultContext } from "./faults.ts";
import { bump, sleep, type SnapshotRow } from "./model.ts";

const SNAPSHOT_MS = 200;
const SCHEDULING_SLACK_MS = 1_000;

export interface IncidentFigures {
  outageMs: number;
  incidents: { id: number; endedBy: string | null; released: number; durationMs: number }[];
  devicesHeld: number;
  /** The most moves of one held device while its incident lasted. */
  mostMovesWhileHeld: number;
  /** From an incident's end (after the mend) to each released device's next server, ms. */
  recoveryMs: number[];
  /** And to its QR, ms, as the snapshots saw it. */
  qrAgainMs: number[];
  recoveryBoundMs: number;
  singleFailure: string;
}

/** The figures of a run in which nothing of this happened (yet). */
export function noIncidentFigures(recoveryBoundMs = 0): IncidentFigures {
  return {
    outageMs: 0,
    incidents: [],
    devicesHeld: 0,
    mostMovesWhileHeld: 0,
    recoveryMs: [],
    qrAgainMs: [],
    recoveryBoundMs,
    singleFailure: "not run",
  };
}

/** Notes the snapshot's time against its device. */
function stamp(times: Map<string, number[]>, row: SnapshotRow): void {
  const seen = times.get(row.id) ?? [];
  seen.push(row.at.getTime());
  times.set(row.id, seen);
}

/** A device a worker is pairing now, on a live server: one whose attempt can be failed. */
function pairingOnLiveServer(row: SnapshotRow): boolean {
  return row.status === "connecting" && row.has_qr && row.on_live_server;
}

export class FleetFailures {
  readonly figures: IncidentFigures;
  #brokenAt: Date | null = null;
  #mendedAt: Date | null = null;
  /** Snapshot times at which each device showed a QR or was connected. */
  #readyAt = new Map<string, number[]>();
  /** When snapshots saw each device held. */
  #heldAt = new Map<string, number[]>();
  #exceeded = new Set<string>();

  constructor(
    private readonly ctx: FaultContext,
    private readonly counts: Record<string, number>,
  ) {
    this.figures = noIncidentFigures(2 * ctx.options.workerPollMs + SCHEDULING_SLACK_MS);
  }

  /** Every snapshot: who is held, who shows a QR, who ran out of budget. */
  observe(rows: SnapshotRow[]): void {
    for (const row of rows) {
      if (row.held) stamp(this.#heldAt, row);
      if (row.last_error?.startsWith("max_reassignments_exceeded")) this.#exceeded.add(row.id);
      if ((row.status === "connecting" && row.has_qr) || row.status === "connected") {
        stamp(this.#readyAt, row);
      }
    }
  }

  /** Breaks WhatsApp for the whole fleet, waits, mends it. */
  async outage(): Promise<void> {
    const { fleet, options, log } = this.ctx;
    const counts = this.counts;
    this.#brokenAt = new Date();
    await fleet.setWhatsAppOutage("version_outdated");
    bump(counts, "WhatsApp broken for every server (version_outdated)");
    log(`WhatsApp broken for ${options.whatsappOutageSeconds} s`);
    const mendAt = Date.now() + options.whatsappOutageSeconds * 1000;
    await this.#whileBroken(mendAt, options.injectViolations ?? false);
    await sleep(Math.max(0, mendAt - Date.now()));
    await fleet.setWhatsAppOutage(null);
    this.#mendedAt = new Date();
    this.figures.outageMs = this.#mendedAt.getTime() - this.#brokenAt.getTime();
    bump(counts, "WhatsApp mended");
  }

  /**
   * While WhatsApp is broken. Pairing attempts that were already showing a QR
   * fail too, as a rejected client version fails every open socket: if none
   * has failed by a quarter of the outage (a run may start none in that time),
   * one on each of two servers fails, which is what opens an incident. With
   * `inject` (the self-check), two moves of a device the incident holds are
   * written behind the API's back, which invariant 9 must report.
   */
  async #whileBroken(until: number, inject: boolean): Promise<void> {
    const { db, invariants } = this.ctx;
    const nudgeAt = Date.now() + (until - Date.now()) / 4;
    let failedOn = new Set<string>();
    while (Date.now() < until) {
      const held = invariants.lastRows.find((row) => row.held);
      if (!held && failedOn.size < 2 && Date.now() >= nudgeAt) {
        failedOn = await this.#failOnTwoServers(failedOn);
      }
      if (held && !inject) return;
      if (held) {
        await db`
          insert into public.device_assignment_events (device_id, from_server_id, to_server_id,
                                                       epoch, reason, actor)
          select d.id, d.assigned_server_id, d.assigned_server_id, d.assignment_epoch,
                 'server_failure', 'chaos self-check'
          from public.devices d, generate_series(1, 2) where d.id = ${held.id}`;
        invariants.corrupted.add(held.id);
        bump(this.counts, "self-check corruptions (expected violations)");
        return;
      }
      await sleep(SNAPSHOT_MS);
    }
  }

  /** Fails a pairing attempt on servers not yet in `done`, until two have reported. */
  async #failOnTwoServers(done: Set<string>): Promise<Set<string>> {
    const { fleet, invariants } = this.ctx;
    for (const row of invariants.lastRows) {
      if (done.size >= 2) break;
      if (!pairingOnLiveServer(row)) continue;
      if (done.has(row.assigned_server_id!)) continue;
      if (await fleet.failDevice(row.id, "version_outdated", 2_000)) {
        done.add(row.assigned_server_id!);
        bump(this.counts, "a pairing attempt showing a QR failed (version_outdated)");
      }
    }
    return done;
  }

  /**
   * One pairing attempt fails on its server alone; maintenance must retry it
   * elsewhere. Tries a few devices: faults may move one before maintenance.
   */
  async singleFailure(): Promise<void> {
    const { fleet, db, invariants, pick } = this.ctx;
    for (let attempt = 1; attempt <= 10; attempt++) {
      if (attempt > 1) await sleep(300);
      const pairing = invariants.lastRows.filter(pairingOnLiveServer);
      if (pairing.length === 0) {
        this.figures.singleFailure = "skipped: no device pairing on a live server";
        continue;
      }
      const device = pick(pairing);
      const worker = await fleet.failDevice(device.id, "connection_failure", 3_000);
      if (!worker) {
        this.figures.singleFailure = "skipped: its worker no longer paired it";
        this.ctx.log(`single failure: no worker paired ${device.id} (attempt ${attempt})`);
        continue;
      }
      bump(this.counts, "pairing attempt failed on one server (connection_failure)");
      const [row] = await db`
        select status, last_error, assigned_server_id,
               (select count(*)::int from device_assignment.live_servers l
                 where l.id <> d.assigned_server_id) as other_live
        from public.devices d where d.id = ${device.id}`;
      if (row.status !== "error" || row.last_error !== "connection_failure") {
        this.figures.singleFailure = `skipped: the device moved on (${row.status})`;
        continue;
      }
      const [{ at }] = await db`select clock_timestamp() as at`;
      // Passes as pg_cron would make them; one may be skipped (another pass
      // runs) or skip the row (a request holds it for a moment).
      let move: postgres.Row | undefined;
      for (let pass = 0; pass < 3 && !move; pass++) {
        if (pass > 0) await sleep(300);
        await db`select public.run_assignment_maintenance()`;
        [move] = await db`
          select e.to_server_id from public.device_assignment_events e
          where e.device_id = ${device.id} and e.reason = 'server_failure'
            and e.from_server_id = ${row.assigned_server_id} and e.created_at >= ${at}`;
      }
      const [now] = await db`select status, last_error from public.devices where id = ${device.id}`;
      if (move?.to_server_id && move.to_server_id !== row.assigned_server_id) {
        this.figures.singleFailure = `retried on another server after failing on ${worker}`;
      } else if (now.status !== "error" || now.last_error !== "connection_failure") {
        this.figures.singleFailure = `skipped: the device moved on (${now.status})`;
        continue;
      } else if (row.other_live > 0) {
        invariants.violate(
          "failure_retried",
          `device ${device.id} failed with connection_failure on ${worker} alone and ` +
            `maintenance did not move it, with ${row.other_live} other live servers`,
        );
        this.figures.singleFailure = "not retried";
      } else this.figures.singleFailure = "skipped: no other live server";
      return;
    }
  }

  /** Invariant 9, from the incidents and audit rows of the run and the snapshots. */
  async check(db: postgres.Sql, t0: Date): Promise<void> {
    if (!this.#brokenAt || !this.#mendedAt) return;
    const { invariants } = this.ctx;
    const ours = invariants.allDeviceIds;
    const everHeld = new Set(this.#heldAt.keys());
    const incidents = await db`
      select i.id, i.code, i.started_at, i.ended_at, i.ended_by,
             coalesce(array_agg(e.device_id) filter (where e.device_id is not null), '{}') as released
      from device_assignment.fleet_incidents i
      left join public.device_assignment_events e
        on e.reason = 'fleet_incident_ended' and e.actor = 'incident ' || i.id
       and e.device_id = any(${ours}::uuid[])
      where i.started_at >= ${t0}
      group by i.id order by i.id`;
    if (incidents.length === 0) {
      invariants.violate(
        "fleet_incident",
        `WhatsApp failed every pairing for ${this.figures.outageMs} ms and no incident opened`,
      );
    }
    for (const incident of incidents) {
      const released: string[] = incident.released;
      const endedAt: Date | null = incident.ended_at;
      this.figures.incidents.push({
        id: Number(incident.id),
        endedBy: incident.ended_by,
        released: released.length,
        durationMs: (endedAt?.getTime() ?? Date.now()) - incident.started_at.getTime(),
      });
      if (!endedAt) {
        // Quiet for its window, it ends at the next request or maintenance pass:
        // a run that stops soon after the mend may not have seen either.
        const openMs = Date.now() - this.#mendedAt.getTime();
        if (openMs > this.ctx.options.incidentWindowS * 1000 + 5_000) {
          invariants.violate(
            "fleet_incident",
            `incident ${incident.id} (${incident.code}) still open ${openMs} ms after ` +
              `WhatsApp was mended`,
          );
        }
      }
      for (const device of released) everHeld.add(device);
      // An incident still open has lasted until now: its moves so far count too.
      const until = endedAt ?? new Date();
      // Released by it, or seen held while it lasted (an operator may have moved one out).
      const start = incident.started_at.getTime();
      // Each held until the end, or until the last snapshot that saw it held.
      const heldUntil = new Map(released.map((device) => [device, until.getTime()]));
      for (const [device, times] of this.#heldAt) {
        const during = times.filter((t) => t >= start && t <= until.getTime());
        if (during.length && !heldUntil.has(device)) {
          heldUntil.set(device, Math.max(...during) + SNAPSHOT_MS);
        }
      }
      const events = await db`
        select e.device_id, e.created_at from public.device_assignment_events e
        where e.device_id = any(${[...heldUntil.keys()]}::uuid[])
          and e.created_at >= ${incident.started_at} and e.created_at < ${until}
          and e.reason not in ('claimed', 'session_failover', 'fleet_incident_ended', 'operator')`;
      const moves = new Map<string, number>();
      for (const { device_id, created_at } of events) {
        if (created_at.getTime() < heldUntil.get(device_id)!) {
          moves.set(device_id, (moves.get(device_id) ?? 0) + 1);
        }
      }
      for (const [device_id, n] of moves) {
        this.figures.mostMovesWhileHeld = Math.max(this.figures.mostMovesWhileHeld, n);
        if (n > 1) {
          invariants.violate(
            "fleet_incident",
            `device ${device_id} was moved ${n} times while incident ${incident.id} held it`,
          );
        }
      }
      // Not released yet, or released while WhatsApp was still broken (a device
      // fails again): no recovery to time.
      if (!endedAt || endedAt < this.#mendedAt) continue;
      const placed = await db`
        select d.id, min(e.created_at) as at
        from unnest(${released}::uuid[]) d(id)
        left join public.device_assignment_events e
          on e.device_id = d.id and e.to_server_id is not null and e.created_at >= ${endedAt}
         and e.reason <> 'fleet_incident_ended'
        group by d.id`;
      for (const { id, at } of placed) {
        const took = at ? at.getTime() - endedAt.getTime() : null;
        if (took !== null) this.figures.recoveryMs.push(took);
        if (took === null || took > this.figures.recoveryBoundMs) {
          invariants.violate(
            "fleet_incident",
            `device ${id} released by incident ${incident.id} reached no server ` +
              `${took === null ? "before the run ended" : `for ${took} ms`} ` +
              `(bound ${this.figures.recoveryBoundMs} ms)`,
          );
        }
        const qr = (this.#readyAt.get(id) ?? []).find((t) => t >= endedAt.getTime());
        if (qr !== undefined) this.figures.qrAgainMs.push(qr - endedAt.getTime());
      }
    }
    this.figures.devicesHeld = everHeld.size;
    for (const device of this.#exceeded) {
      if (everHeld.has(device)) {
        invariants.violate(
          "fleet_incident",
          `device ${device}, held by a fleet incident, reached max_reassignments_exceeded`,
        );
      }
    }
  }
}
