/**
 * The faults of a chaos run, drawn from its seeded generator: hard kills and
 * restarts, heartbeat partitions that heal late (self-fencing or not),
 * graceful restarts, added workers, operator bulk reassignments, deliberate
 * stale writes (QRs and session entries at a past epoch), the self-check's
 * corruptions, a partition of the server holding most linked devices, and a
 * PostgreSQL outage on a private stack. What each does to the database is
 * judged by invariants.ts.
 */
import type postgres from "postgres";
import type { Stack } from "../e2e/harness.ts";
import type { Fleet } from "../../worker/fleet.ts";
import type { Invariants } from "./invariants.ts";
import { bump, callFunction, type ChaosOptions, type Owner, rpc, sleep } from "./model.ts";
import type { PrivateStack } from "./private_stack.ts";
import { FleetFailures } from "./incidents.ts";

export interface FaultContext {
  options: ChaosOptions;
  log: (line: string) => void;
  db: postgres.Sql;
  stack: Stack;
  fleet: Fleet;
  invariants: Invariants;
  owners: Owner[];
  privateStack: PrivateStack | null;
  random: () => number;
  pick: <T>(items: readonly T[]) => T;
  between: (lo: number, hi: number) => number;
  /** When the run started and when its faults stop, ms since the epoch. */
  started: number;
  deadline: number;
}

export class Faults {
  /** How often each fault happened, for the report. */
  readonly counts: Record<string, number> = {};
  /** The answers operators and users got, per call, for the report. */
  readonly requests: Record<string, Record<string, number>> = {};
  readonly staleProbes = { attempted: 0, fenced: 0, other: {} as Record<string, number> };
  readonly outage = {
    downMs: 0,
    answersWhileDown: {} as Record<string, number>,
    recoveredAfterMs: null as number | null,
  };

  #pending: Promise<unknown>[] = [];
  #extraWorkers = 0;
  #injected: boolean;
  #linkedPartitioned = false;
  #outageDone = false;
  #singleFailureDone = false;
  #whatsappDone = false;
  /** WhatsApp's own failures, fleet-wide and on one server (incidents.ts). */
  readonly failures: FleetFailures;

  constructor(private readonly ctx: FaultContext) {
    this.#injected = !ctx.options.injectViolations;
    this.failures = new FleetFailures(ctx, this.counts);
  }

  count(what: string, status: string): void {
    bump(this.requests[what] ??= {}, status);
  }

  #later(ms: number, action: () => Promise<unknown>): void {
    this.#pending.push(
      sleep(ms).then(action).catch((error) => this.ctx.log(`delayed fault: ${error}`)),
    );
  }

  #alive() {
    return this.ctx.fleet.list().filter((w) => w.state === "running");
  }

  /** Faults until the deadline, then every delayed one (restarts, heals) done. */
  async run(): Promise<void> {
    const { options, started, deadline, random, pick, between, fleet: f } = this.ctx;
    while (Date.now() < deadline) {
      if (!this.#injected && Date.now() > started + options.seconds * 500) {
        this.#injected = true;
        await this.#inject();
      }
      if (!this.#linkedPartitioned && Date.now() > started + options.seconds * 330) {
        await this.#partitionLinkedHolder().catch((error) =>
          this.ctx.log(`linked partition: ${error}`)
        );
      }
      if (
        this.ctx.privateStack && options.dbRestart && !this.#outageDone &&
        Date.now() > started + options.seconds * 400
      ) {
        this.#outageDone = true;
        await this.#databaseOutage(this.ctx.privateStack);
        continue;
      }
      if (!this.#singleFailureDone && Date.now() > started + options.seconds * 250) {
        this.#singleFailureDone = true;
        await this.failures.singleFailure();
      }
      // In the background: the other faults go on while WhatsApp is down.
      if (
        options.whatsappOutageSeconds > 0 && !this.#whatsappDone &&
        Date.now() > started + options.seconds * 600
      ) {
        this.#whatsappDone = true;
        this.#later(0, () => this.failures.outage());
      }
      await sleep(between(500, 1_500));
      if (Date.now() >= deadline) break;
      const running = this.#alive();
      const roll = random();
      try {
        if (roll < 0.2 && running.length >= 2) {
          const victim = pick(running).name;
          await f.kill(victim);
          bump(this.counts, "worker SIGKILL");
          this.#later(between(1_000, options.heartbeatTimeoutS * 2_500), async () => {
            if (Date.now() < deadline) {
              await f.restart(victim);
              bump(this.counts, "killed worker restarted");
            }
          });
        } else if (roll < 0.35 && running.length >= 2) {
          const victim = pick(running).name;
          const selfFencing = random() < 0.5;
          await f.partition(victim, { selfFencing });
          bump(
            this.counts,
            selfFencing ? "partition (self-fencing)" : "partition (not self-fencing)",
          );
          // Heals late: often after the lease lapsed and the devices moved on.
          this.#later(between(500, options.heartbeatTimeoutS * 2_000), () => this.#heal(victim));
        } else if (roll < 0.45 && running.length >= 2) {
          const victim = pick(running).name;
          await f.restart(victim);
          bump(this.counts, "graceful restart");
        } else if (roll < 0.5 && this.#extraWorkers < 2) {
          f.add();
          this.#extraWorkers++;
          bump(this.counts, "worker added");
        } else if (roll < 0.75) {
          await this.#operatorCall();
        } else {
          await this.#staleProbe();
        }
      } catch (error) {
        bump(this.counts, "fault skipped (fleet busy)");
        this.ctx.log(`fault skipped: ${error instanceof Error ? error.message : error}`);
      }
    }
  }

  /** Waits for the delayed faults (restarts, heals) still pending. */
  async drain(): Promise<void> {
    await Promise.all(this.#pending);
  }

  async #heal(victim: string): Promise<void> {
    if (this.ctx.fleet.info(victim).state === "partitioned") {
      await this.ctx.fleet.heal(victim);
      bump(this.counts, "partition healed");
    }
  }

  async #operatorCall(): Promise<void> {
    const { options, stack, random, pick, invariants } = this.ctx;
    const roll = random();
    let body: Record<string, unknown>;
    if (roll < 0.35) body = { scope: "inactive" };
    else if (roll < 0.6) body = { scope: "all_connecting", dry_run: !options.exclusive };
    else body = { scope: "device", device_id: pick(invariants.allDeviceIds) };
    const answer = await callFunction(stack, "reassign-device", stack.secretKey, body, {
      operator: true,
    });
    const label = `${body.scope}${body.dry_run ? " (dry run)" : ""}`;
    bump(this.counts, `operator reassign ${label}`);
    this.count(`reassign-device (operator ${label})`, String(answer.status));
    if (answer.status >= 500 && answer.status !== 503) {
      invariants.violate(
        "api_answers",
        `operator ${label} → ${answer.status} ${answer.text.slice(0, 200)}`,
      );
    }
  }

  /** The server a device was last given to before its current epoch, with that epoch. */
  async #previousOwner(deviceId: string) {
    const [row] = await this.ctx.db`
      select e.to_server_id, e.epoch, d.assignment_epoch
      from public.devices d
      join public.device_assignment_events e on e.device_id = d.id
      where d.id = ${deviceId} and e.epoch < d.assignment_epoch and e.to_server_id is not null
      order by e.epoch desc limit 1`;
    return row;
  }

  /**
   * Writes a session entry as the previous owner of a device at its previous
   * epoch, preferring linked devices: must be fenced, and never land.
   */
  async #staleSessionProbe(): Promise<void> {
    const { stack, random, pick, invariants } = this.ctx;
    const sessions = invariants.sessions;
    const deviceId = invariants.everLinked.size > 0 && random() < 0.7
      ? pick([...invariants.everLinked])
      : pick(invariants.allDeviceIds);
    const row = await this.#previousOwner(deviceId);
    if (!row) return;
    sessions.staleProbes.attempted++;
    const answer = await rpc(stack, "device_session_write", {
      p_device_id: deviceId,
      p_server_id: row.to_server_id,
      p_epoch: Number(row.epoch),
      p_entries: [{ type: "chaos-probe", id: crypto.randomUUID(), value: "stale" }],
    });
    bump(this.counts, "stale session write probe");
    if (answer.status === 409 && answer.body?.message === "fenced") sessions.staleProbes.fenced++;
    else if (answer.status === 200) {
      invariants.violate(
        "session_write",
        `session write at epoch ${row.epoch} accepted for ${deviceId} (now ${row.assignment_epoch})`,
      );
    } else {
      bump(sessions.staleProbes.other, `${answer.status} ${answer.body?.message ?? ""}`.trim());
    }
  }

  /** Writes as the previous owner of a device at its previous epoch: must be fenced. */
  async #staleProbe(): Promise<void> {
    const { stack, random, pick, invariants } = this.ctx;
    if (random() < 0.5) return await this.#staleSessionProbe();
    const deviceId = pick(invariants.allDeviceIds);
    const row = await this.#previousOwner(deviceId);
    if (!row) return;
    this.staleProbes.attempted++;
    const answer = await rpc(stack, "publish_device_qr", {
      p_device_id: deviceId,
      p_server_id: row.to_server_id,
      p_epoch: Number(row.epoch),
      p_qr: `chaos-stale-${crypto.randomUUID()}`,
      p_expires_at: new Date(Date.now() + 60_000).toISOString(),
    });
    bump(this.counts, "stale write probe");
    if (answer.status === 409 && answer.body?.message === "fenced") this.staleProbes.fenced++;
    else if (answer.status === 200) {
      invariants.violate(
        "stale_write",
        `publish at epoch ${row.epoch} accepted for ${deviceId} (now ${row.assignment_epoch})`,
      );
    } else {
      bump(this.staleProbes.other, `${answer.status} ${answer.body?.message ?? ""}`.trim());
    }
  }

  /** The self-check: corruptions behind the API's back, each of which the run must report. */
  async #inject(): Promise<void> {
    const { db, invariants } = this.ctx;
    const ids = invariants.allDeviceIds;
    const [a, b, c] = ids;
    for (const id of ids.slice(0, 5)) invariants.corrupted.add(id);
    // Disconnected too, so no worker's next QR overwrites it before a snapshot sees it.
    await db`update public.devices set qr_code = 'chaos-stale-injected', status = 'disconnected'
             where id = ${a}`;
    await db`
      insert into public.device_assignment_events (device_id, from_server_id, to_server_id,
                                                   epoch, reason, actor)
      select ${b}, null, gen_random_uuid(), assignment_epoch, 'operator', 'chaos self-check'
      from public.devices where id = ${b}`;
    await db`update public.devices set assignment_epoch = assignment_epoch - 1 where id = ${c}`;
    bump(this.counts, "self-check corruptions (expected violations)", 3);
    const [, , , d, e] = ids;
    if (e) {
      // A linked device whose creds are gone, and a session entry nobody was allowed to write.
      await db`delete from device_assignment.device_sessions where device_id = ${d}`;
      await db`update public.devices set status = 'connected' where id = ${d}`;
      await db`insert into device_assignment.device_sessions (device_id, type, id, value)
               values (${e}, 'chaos-probe', 'injected', 'stale')`;
      bump(this.counts, "self-check corruptions (expected violations)", 2);
    }
  }

  /**
   * Once a third of the way in: the server holding the most linked devices
   * loses its control plane without fencing itself, past its lease, so its
   * sessions fail over while it goes on writing keys for them.
   */
  async #partitionLinkedHolder(): Promise<void> {
    const { options, fleet: f, invariants } = this.ctx;
    const linkedHeld = (worker: string) =>
      [...(invariants.beliefs.get(worker)?.devices.keys() ?? [])]
        .filter((id) => invariants.everLinked.has(id)).length;
    const victim = this.#alive().map((w) => w.name).sort((a, b) => linkedHeld(b) - linkedHeld(a))[
      0
    ];
    if (!victim || linkedHeld(victim) === 0) return;
    this.#linkedPartitioned = true;
    await f.partition(victim, { selfFencing: false });
    bump(this.counts, "partition of the server holding most linked devices (not self-fencing)");
    this.#later(
      options.heartbeatTimeoutS * 1_500 + 4 * options.workerPollMs,
      () => this.#heal(victim),
    );
  }

  /**
   * Stops PostgreSQL, probes the functions every 250 ms while it is down (each
   * probe on its own, so one that hangs does not hide the others), starts it
   * again and times the first 200.
   */
  async #databaseOutage(target: PrivateStack): Promise<void> {
    const { options, stack, invariants, log } = this.ctx;
    const outage = this.outage;
    const owner = this.ctx.owners[0];
    const probe = () =>
      callFunction(stack, "get-device-qr", owner.token, { device_id: owner.devices[0] }, {
        timeoutMs: options.recoveryBoundMs,
      });
    await target.stopDatabase();
    const downAt = Date.now();
    bump(this.counts, "PostgreSQL stopped");
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
            invariants.violate(
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
    bump(this.counts, "PostgreSQL restarted");
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
      invariants.violate(
        "outage",
        `no 200 within ${options.recoveryBoundMs} ms of the database's return`,
      );
    }
  }
}
