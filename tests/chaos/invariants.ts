/**
 * The invariants of a chaos run (INVARIANTS in model.ts), checked from the
 * database, not from what the workers say about themselves: periodic snapshots
 * of the run's devices (3, 4, 6, 8, 8b), the answers users get (5), and, once
 * the run is over, the audit trail against the workers' own events (1, 2, 7).
 * Every violation found is recorded here; the report reads them.
 */
import type postgres from "postgres";
import type { FleetEvent } from "../../worker/fleet.ts";
import {
  type Answer,
  type Baseline,
  boundFor,
  bump,
  type ChaosOptions,
  type Invariant,
  type SessionFigures,
  type SnapshotRow,
} from "./model.ts";

/** What each live worker process believes, from its events: its server id and its devices' epochs. */
type Belief = { serverId: string | null; devices: Map<string, number> };

export class Invariants {
  readonly violations: Record<Invariant, string[]> = {
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
    fleet_incident: [],
    failure_retried: [],
  };
  readonly sessions: SessionFigures = {
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
  readonly everLinked = new Set<string>();
  /** Rows the self-check corrupts on purpose (--inject-violations). */
  readonly corrupted = new Set<string>();
  /** A process that exits or is killed believes nothing any more. */
  readonly beliefs = new Map<string, Belief>();
  /** The run's devices with their owner and name, which must never change. */
  readonly baseline = new Map<string, Baseline>();
  readonly allDeviceIds: string[] = [];

  snapshots = 0;
  longestOrphanMs = 0;
  longestOrphanWithRoomMs = 0;
  orphanEpisodes = 0;
  /** The latest snapshot, for the settling at the end. */
  lastRows: SnapshotRow[] = [];

  #orphanSince = new Map<string, { since: number; withRoom: number | null }>();
  #lastEpoch = new Map<string, number>();
  #violatedOrphans = new Set<string>();
  #staleLanded = new Set<string>();
  /** Each kind of session violation is reported once per device. */
  #sessionReported = new Set<string>();
  /** Since when a device the database calls connected on a live server has had no live holder. */
  #unheldSince = new Map<string, number>();
  /**
   * A SIGKILLed server is live to the database until its heartbeat timeout,
   * and its devices wait for the next claim after that: a linked device may
   * be held by nobody that long, never longer (a restart under the same name,
   * or a self-fence the database did not see, used to make it forever).
   */
  readonly #holderGraceMs: number;

  constructor(
    private readonly options: ChaosOptions,
    private readonly log: (line: string) => void,
  ) {
    this.#holderGraceMs = options.heartbeatTimeoutS * 1_000 + options.workerPollMs + 2_000;
  }

  violate(invariant: Invariant, message: string): void {
    const list = this.violations[invariant];
    if (list.length < 50) list.push(message);
    if (list.length <= 3) this.log(`VIOLATION ${invariant}: ${message}`);
  }

  #violateOnce(invariant: Invariant, deviceId: string, kind: string, message: string): void {
    if (this.#sessionReported.has(`${kind}:${deviceId}`)) return;
    this.#sessionReported.add(`${kind}:${deviceId}`);
    this.violate(invariant, message);
  }

  /** The fleet's event hook: keeps each worker's beliefs. */
  believe = (event: FleetEvent): void => {
    if (["spawned", "killed", "exited"].includes(event.type)) {
      this.beliefs.delete(event.worker);
      return;
    }
    let belief = this.beliefs.get(event.worker);
    if (!belief) this.beliefs.set(event.worker, belief = { serverId: null, devices: new Map() });
    if (event.type === "heartbeat") belief.serverId = String(event.serverId);
    else if (event.type === "session_started") {
      belief.devices.set(String(event.deviceId), Number(event.epoch));
    } else if (
      event.type === "session_dropped" &&
      belief.devices.get(String(event.deviceId)) === Number(event.epoch)
    ) belief.devices.delete(String(event.deviceId));
  };

  // --- snapshots: invariants 3, 4, 8 and 8b, and stale probe values landing in rows ----------

  /** One snapshot of the run's devices, with what the invariants need of each. */
  async snapshot(db: postgres.Sql): Promise<SnapshotRow[] | null> {
    return await db<SnapshotRow[]>`
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
             d.status = 'error' and exists (select from device_assignment.fleet_incidents i
                                            where i.ended_at is null and i.code = d.last_error)
               as held,
             clock_timestamp() as at
      from public.devices d, room
      where d.id = any(${this.allDeviceIds}::uuid[])`.catch((error) => {
      this.log(`snapshot failed: ${error.message}`);
      return null;
    });
  }

  #heldBy(row: SnapshotRow): boolean {
    return [...this.beliefs.values()].some((b) =>
      b.serverId === row.assigned_server_id &&
      b.devices.get(row.id) === Number(row.assignment_epoch)
    );
  }

  #checkSession(row: SnapshotRow): void {
    const linkedNow = row.status === "connected" || row.status === "reconnecting";
    if (row.status === "connected") this.everLinked.add(row.id);
    if (linkedNow && !row.has_creds) {
      this.#violateOnce(
        "session_kept",
        row.id,
        "creds",
        `device ${row.id} is ${row.status} without its stored creds`,
      );
    }
    if (this.everLinked.has(row.id) && !linkedNow) {
      this.#violateOnce(
        "session_kept",
        row.id,
        "unlinked",
        `device ${row.id} was linked, now ${row.status} (last_error ${row.last_error})`,
      );
    }
    if (row.status === "connected" && row.on_live_server && !this.#heldBy(row)) {
      const key = `${row.id}@${row.assignment_epoch}`;
      const since = this.#unheldSince.get(key) ?? row.at.getTime();
      this.#unheldSince.set(key, since);
      if (row.at.getTime() - since > this.#holderGraceMs && !this.corrupted.has(row.id)) {
        this.#violateOnce(
          "session_held",
          key,
          "unheld",
          `device ${row.id}, connected at epoch ${row.assignment_epoch} on a live server, ` +
            `has had no live worker holding it for over ${this.#holderGraceMs} ms`,
        );
      }
    } else this.#unheldSince.delete(`${row.id}@${row.assignment_epoch}`);
    if (row.probe_landed) {
      this.#violateOnce(
        "session_write",
        row.id,
        "probe",
        `a stale session probe's entry landed on ${row.id}`,
      );
    }
  }

  checkSnapshot(rows: SnapshotRow[]): void {
    this.snapshots++;
    this.lastRows = rows;
    const seen = new Set(rows.map((r) => r.id));
    for (const id of this.allDeviceIds) {
      if (!seen.has(id)) this.violate("rows_intact", `device ${id} disappeared`);
    }
    const now = rows[0]?.at.getTime() ?? Date.now();
    for (const row of rows) {
      const base = this.baseline.get(row.id)!;
      if (row.user_id !== base.userId || row.device_name !== base.name) {
        this.violate("rows_intact", `device ${row.id} changed owner or name`);
      }
      const epoch = Number(row.assignment_epoch);
      const before = this.#lastEpoch.get(row.id);
      if (before !== undefined && epoch < before) {
        this.violate("rows_intact", `device ${row.id} epoch went back from ${before} to ${epoch}`);
      }
      this.#lastEpoch.set(row.id, epoch);
      this.#checkSession(row);
      if (row.stale_probe && !this.#staleLanded.has(row.id)) {
        this.#staleLanded.add(row.id);
        this.violate("stale_write", `a stale probe's QR landed on ${row.id}`);
      }
      this.#checkOrphan(row, now);
    }
  }

  #checkOrphan(row: SnapshotRow, now: number): void {
    const episode = this.#orphanSince.get(row.id);
    if (row.orphaned) {
      if (!episode) this.#orphanSince.set(row.id, { since: now, withRoom: row.room ? now : null });
      else if (!row.room) episode.withRoom = null;
      else if (episode.withRoom === null) episode.withRoom = now;
      const current = this.#orphanSince.get(row.id)!;
      this.longestOrphanMs = Math.max(this.longestOrphanMs, now - current.since);
      if (current.withRoom !== null) {
        const withRoom = now - current.withRoom;
        if (withRoom > this.longestOrphanWithRoomMs) this.longestOrphanWithRoomMs = withRoom;
        if (
          withRoom > boundFor(this.options) && !this.#violatedOrphans.has(row.id + current.since)
        ) {
          this.#violatedOrphans.add(row.id + current.since);
          this.violate(
            "orphan_bound",
            `device ${row.id} orphaned ${withRoom} ms while a live server had room`,
          );
        }
      }
    } else if (episode) {
      this.#orphanSince.delete(row.id);
      this.orphanEpisodes++;
    }
  }

  /**
   * Invariant 6: when two or more live workers believe they hold one device,
   * try each one's server and epoch against the database's own fence
   * (device_session_read, which changes nothing), with the row locked so
   * that all of them meet the same row. At most one may pass.
   */
  async checkHolders(db: postgres.Sql): Promise<void> {
    const believers = new Map<string, { worker: string; serverId: string; epoch: number }[]>();
    for (const [worker, belief] of this.beliefs) {
      if (!belief.serverId) continue;
      for (const [deviceId, epoch] of belief.devices) {
        const list = believers.get(deviceId) ?? [];
        list.push({ worker, serverId: belief.serverId, epoch });
        believers.set(deviceId, list);
      }
    }
    for (const [deviceId, list] of believers) {
      if (list.length < 2 || !this.baseline.has(deviceId)) continue;
      this.sessions.holderChecks++;
      const accepted = await db.begin(async (tx) => {
        await tx`select from public.devices where id = ${deviceId} for update`;
        const passed: string[] = [];
        for (const b of list) {
          const ok = await tx.savepoint((sp) =>
            sp`select device_assignment.device_session_read(
                 ${deviceId}, ${b.serverId}, ${b.epoch}, 'creds', array['creds'])`
          ).then(() => true, (error) => {
            if (!String(error.message).includes("fenced")) {
              this.log(`holder check: ${error.message}`);
            }
            return false;
          });
          if (ok) passed.push(`${b.worker} at epoch ${b.epoch}`);
        }
        return passed;
      }).catch((error) => {
        this.log(`holder check failed: ${error.message}`);
        return [] as string[];
      });
      if (accepted.length > 1) {
        this.violate(
          "session_holder",
          `device ${deviceId}: the database accepts ${accepted.join(" and ")} at once`,
        );
      }
    }
  }

  // --- users' answers: invariant 5 -------------------------------------------------------------

  checkAnswer(fn: string, answer: Answer): void {
    const allowed = fn === "get-device-qr" ? [200, 202, 429, 503] : [200, 409, 429, 503];
    const contract503 = ["no_active_servers", "database_unavailable"];
    if (
      !allowed.includes(answer.status) ||
      (answer.status === 503 && !contract503.includes(answer.body?.error?.code ?? ""))
    ) {
      this.violate("api_answers", `${fn} → ${answer.status} ${answer.text.slice(0, 200)}`);
    }
  }

  // --- after the faults: every linked device connected, held, without a QR ---------------------

  /** Linked devices connected on a live server without a QR. */
  settled(rows: SnapshotRow[]): SnapshotRow[] {
    return rows.filter((r) =>
      this.everLinked.has(r.id) && r.status === "connected" && r.on_live_server && !r.has_qr
    );
  }

  /** The self-check's fake linked device never settles; no need to wait for it. */
  allSettled(): boolean {
    return this.settled(this.lastRows).length >=
      [...this.everLinked].filter((id) => !this.corrupted.has(id)).length;
  }

  checkSettled(settleMs: number): void {
    this.sessions.settleMs = settleMs;
    const atEnd = new Set(this.settled(this.lastRows).map((r) => r.id));
    this.sessions.connectedAtEnd = atEnd.size;
    this.sessions.linkedAtEnd = this.everLinked.size;
    // Held by a live worker too: a server that restarted keeps its id, and a
    // device the database calls connected there must still have its socket.
    const held = new Map<string, string>();
    for (const [worker, belief] of this.beliefs) {
      for (const [deviceId, epoch] of belief.devices) held.set(`${deviceId}@${epoch}`, worker);
    }
    for (const row of this.lastRows.filter((r) => this.everLinked.has(r.id))) {
      if (!atEnd.has(row.id)) {
        this.violate(
          "session_kept",
          `device ${row.id} was linked; ${settleMs} ms after the faults it is ${row.status}` +
            `${row.on_live_server ? "" : " on no live server"}${row.has_qr ? " with a QR" : ""}`,
        );
      } else if (!held.has(`${row.id}@${row.assignment_epoch}`)) {
        const serving = [...this.beliefs].find(([, b]) => b.serverId === row.assigned_server_id)
          ?.[0];
        this.violate(
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
  }

  // --- the audit trail: invariants 1, 2 and 7 ---------------------------------------------------

  /**
   * Reads the audit trail of the run's devices since `t0` and checks it, and
   * the workers' publishes and session writes, against it.
   */
  async checkAuditTrail(db: postgres.Sql, t0: Date, fleetEvents: FleetEvent[]) {
    const events = await db<
      { device_id: string; to_server_id: string | null; epoch: string; reason: string; at: Date }[]
    >`
      select device_id, to_server_id, epoch, reason, created_at as at
      from public.device_assignment_events
      where device_id = any(${this.allDeviceIds}::uuid[]) and created_at >= ${t0}
      order by id`;
    const reassignments: Record<string, number> = {};
    const byDevice = new Map<string, (typeof events)[number][]>();
    for (const event of events) {
      bump(reassignments, event.reason);
      byDevice.set(event.device_id, [...(byDevice.get(event.device_id) ?? []), event]);
    }
    const finalRows = await db<{ id: string; assignment_epoch: string }[]>`
      select id, assignment_epoch from public.devices where id = any(${this.allDeviceIds}::uuid[])`;
    if (finalRows.length !== this.allDeviceIds.length) {
      this.violate(
        "rows_intact",
        `${this.allDeviceIds.length - finalRows.length} devices missing at the end`,
      );
    }
    for (const row of finalRows) this.#checkTrail(row, byDevice.get(row.id) ?? []);

    // A worker's publish that went through must have been made at the epoch the
    // database held: none may start after the database moved the device on.
    const MARGIN_MS = 100;
    let publishesAccepted = 0;
    let publishesFenced = 0;
    const mine = new Set(this.allDeviceIds);
    for (const event of fleetEvents) {
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
        this.violate(
          "stale_write",
          `${event.worker} published ${event.deviceId} at epoch ${epoch}, ` +
            `${attemptedAt - newer.at.getTime()} ms after epoch ${newer.epoch} was audited`,
        );
      }
    }

    // Invariant 7 from the workers' side: a session write the database accepted
    // must carry the server its epoch was audited to, and must not start after a
    // newer epoch was audited (the same margin as for publishes).
    const sessions = this.sessions;
    sessions.failovers = reassignments["session_failover"] ?? 0;
    const resumes = new Set<string>();
    for (const event of fleetEvents) {
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
        this.violate(
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
        this.violate(
          "session_write",
          `${event.worker} wrote ${deviceId}'s session at epoch ${epoch}, ` +
            `${attemptedAt - newer.at.getTime()} ms after epoch ${newer.epoch} was audited`,
        );
      }
    }
    return { reassignments, publishesAccepted, publishesFenced };
  }

  /** Invariant 1 for one device: each epoch names one server, epochs only grow, the row's is the last. */
  #checkTrail(
    row: { id: string; assignment_epoch: string },
    trail: { to_server_id: string | null; epoch: string }[],
  ): void {
    const owners = new Map<string, Set<string | null>>();
    let last = -Infinity;
    for (const event of trail) {
      const epoch = Number(event.epoch);
      if (epoch <= last) {
        this.violate("single_owner", `device ${row.id}: epoch ${epoch} audited after ${last}`);
      }
      last = Math.max(last, epoch);
      owners.set(event.epoch, (owners.get(event.epoch) ?? new Set()).add(event.to_server_id));
    }
    for (const [epoch, servers] of owners) {
      if (servers.size > 1) {
        this.violate(
          "single_owner",
          `device ${row.id}: epoch ${epoch} given to ${servers.size} servers`,
        );
      }
    }
    if (trail.length > 0 && Number(row.assignment_epoch) !== last) {
      this.violate(
        "single_owner",
        `device ${row.id}: row epoch ${row.assignment_epoch}, last audited ${last} (an unaudited change)`,
      );
    }
  }
}
