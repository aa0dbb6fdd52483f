/**
 * Fleet simulator, the supervisor: N simulated backend servers, each its own
 * process (worker/main.ts), controllable while they run. Used by `make dev`,
 * the fleet tests, the reliability suite and the benchmarks.
 *
 * `new Fleet({...}).start(3)`, then `kill`, `partition`, `heal`, `restart`,
 * `add`, `scan`, `setWhatsAppOutage`, `failDevice`, and `events` / `waitFor` to
 * observe the workers. Its HTTP control is fleet_control.ts; the program with a
 * command line, fleet_cli.ts.
 */
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { FAILURE_CLASSES, type FailureClass } from "@device-qr/backend";
import { type BackendAccount, createBackendAccount } from "../cli/backend_accounts.ts";
import { createControlToken } from "./control_auth.ts";

export interface FleetOptions {
  /**
   * Passed to every worker: SUPABASE_URL, SUPABASE_PUBLISHABLE_KEY, timings (see
   * worker/main.ts). SUPABASE_SECRET_KEY stays with the supervisor, which makes
   * each worker's backend account with it.
   */
  env: Record<string, string>;
  /** Worker names are `<prefix>-<n>`. */
  prefix?: string;
  /** Called for every event of every worker. */
  onEvent?: (event: FleetEvent) => void;
  /** Where workers' stderr goes; default: discarded after being kept as events. */
  stderrLog?: string;
  /** How many events to keep in memory. */
  maxEvents?: number;
}

/** A worker event (BackendClientEvent, packages/backend/src/client.ts) or a fleet one, stamped. */
export interface FleetEvent {
  seq: number;
  ts: number;
  worker: string;
  type: string;
  [key: string]: unknown;
}

export type WorkerState =
  | "starting"
  | "running"
  | "partitioned"
  | "stopping"
  | "stopped"
  | "killed";

export interface FleetWorkerInfo {
  name: string;
  pid: number | null;
  state: WorkerState;
  serverId: string | null;
  selfFencing: boolean;
  lastHeartbeatAt: number | null;
  heartbeatTimeoutMs: number | null;
  devices: string[];
  restarts: number;
}

interface WorkerProcess {
  info: FleetWorkerInfo;
  child: Deno.ChildProcess | null;
  stdin: WritableStreamDefaultWriter<Uint8Array> | null;
  exited: Promise<void>;
  spawnSeq: number;
}

const WORKER_ENTRY = new URL("./main.ts", import.meta.url);
/** The repository's config, whatever the cwd: its import map names the package (`@device-qr/backend`). */
const WORKER_CONFIG = new URL("../deno.json", import.meta.url);

export class Fleet {
  readonly events: FleetEvent[] = [];
  /** Required on every state-changing control request (./control_auth.ts); new for every run. */
  readonly controlToken = createControlToken();
  readonly #workers = new Map<string, WorkerProcess>();
  readonly #options: Required<Omit<FleetOptions, "onEvent" | "stderrLog">> & FleetOptions;
  #seq = 0;
  #nextIndex = 1;
  #waiters = new Set<() => void>();
  #stderr: Deno.FsFile | null = null;
  /** One backend account per server name, created once per run (the logins carry the run id). */
  readonly #accounts = new Map<string, Promise<BackendAccount>>();
  readonly #runId = crypto.randomUUID().slice(0, 8);
  #admin: SupabaseClient | null = null;
  #whatsappOutage: FailureClass | null = null;

  constructor(options: FleetOptions) {
    this.#options = { prefix: "sim", maxEvents: 50_000, ...options };
    if (options.stderrLog) {
      this.#stderr = Deno.openSync(options.stderrLog, { append: true, create: true });
    }
  }

  /** Start `count` workers; resolves when each has sent its first heartbeat. */
  async start(count: number, timeoutMs = 20_000): Promise<string[]> {
    const names = [];
    for (let i = 0; i < count; i++) names.push(this.add());
    await Promise.all(names.map((name) => this.waitForHeartbeat(name, timeoutMs)));
    return names;
  }

  /** Add one worker; returns its name. */
  add(name?: string): string {
    const workerName = name ?? `${this.#options.prefix}-${this.#nextIndex++}`;
    const existing = this.#workers.get(workerName);
    if (existing && isAlive(existing.info.state)) {
      throw new FleetError("conflict", `${workerName} is already running`);
    }
    this.#spawn(workerName, existing ? existing.info.restarts + 1 : 0);
    return workerName;
  }

  /** SIGKILL: the server vanishes without a word, as a crashed container does. */
  async kill(name: string): Promise<void> {
    const worker = this.#running(name);
    worker.info.state = "killed";
    this.#record(name, { type: "killed" });
    try {
      worker.child!.kill("SIGKILL");
    } catch { /* already gone */ }
    await worker.exited;
  }

  /** SIGTERM: the worker calls server_shutdown and exits. */
  async stop(name: string, graceMs = 5_000): Promise<void> {
    const worker = this.#workers.get(name);
    if (!worker || !isAlive(worker.info.state)) return;
    // A worker still booting has no SIGTERM handler yet; let it get that far.
    await this.waitFor(
      (e) =>
        e.worker === name && e.seq > worker.spawnSeq &&
        (e.type === "started" || e.type === "exited"),
      graceMs,
    ).catch(() => {});
    worker.info.state = "stopping";
    try {
      worker.child!.kill("SIGTERM");
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        worker.child!.kill("SIGKILL");
      } catch { /* already gone */ }
    }, graceMs);
    await worker.exited;
    clearTimeout(timer);
  }

  /** Stop (gracefully if still running) and start again under the same name. */
  async restart(name: string): Promise<void> {
    const worker = this.#workers.get(name);
    if (!worker) throw new FleetError("not_found", `no worker named ${name}`);
    await this.stop(name);
    worker.info.restarts += 1;
    this.#spawn(name, worker.info.restarts);
  }

  /**
   * Cut heartbeats and claims. With `selfFencing: false` (the default) the
   * worker goes on publishing as if it were still live, so only the database
   * fence protects its devices; with `true` it stops itself, as it should.
   */
  async partition(name: string, options: { selfFencing?: boolean } = {}): Promise<void> {
    const worker = this.#running(name);
    const selfFencing = options.selfFencing ?? false;
    await this.#send(worker, selfFencing ? "partition self-fence" : "partition");
    worker.info.state = "partitioned";
    worker.info.selfFencing = selfFencing;
  }

  async heal(name: string): Promise<void> {
    const worker = this.#running(name);
    await this.#send(worker, "heal");
    worker.info.state = "running";
    worker.info.selfFencing = true;
  }

  /**
   * The user scanned the device's QR: whichever worker shows it reports
   * `connected`. Returns that worker's name, or null when none showed a QR.
   */
  scan(deviceId: string, timeoutMs = 5_000): Promise<string | null> {
    return this.#askAll(`scan ${deviceId}`, "scan_result", deviceId, timeoutMs);
  }

  /**
   * The user typed the pairing code on their phone: the worker that issued it
   * links the device. Returns that worker's name, or null when no worker holds
   * this unexpired code for the device.
   */
  enterCode(deviceId: string, code: string, timeoutMs = 5_000): Promise<string | null> {
    // One token on the worker's stdin line: what a phone's code field accepts anyway.
    const typed = code.replace(/[^0-9A-Za-z]/g, "");
    return this.#askAll(
      `enter-code ${deviceId} ${typed}`,
      "code_entry_result",
      deviceId,
      timeoutMs,
    );
  }

  /** Send `command` to every live worker; the first answer with `done` true names the one that did it. */
  async #askAll(
    command: string,
    resultType: string,
    deviceId: string,
    timeoutMs: number,
    done = "connected",
  ): Promise<string | null> {
    const alive = [...this.#workers.values()].filter((w) =>
      w.info.state === "running" || w.info.state === "partitioned"
    );
    if (alive.length === 0) return null;
    const after = this.#seq;
    await Promise.all(alive.map((w) => this.#send(w, command).catch(() => {})));
    const answered = new Set<string>();
    const found = await this.waitFor((event) => {
      if (event.seq <= after || event.type !== resultType || event.deviceId !== deviceId) {
        return false;
      }
      answered.add(event.worker);
      return event[done] === true || answered.size >= alive.length;
    }, timeoutMs).catch(() => null);
    return found?.[done] === true ? found.worker : null;
  }

  /** The failure class simulated WhatsApp refuses every connection with, or null. */
  get whatsappOutage(): FailureClass | null {
    return this.#whatsappOutage;
  }

  /**
   * Break WhatsApp for the whole fleet: every worker, and every one started
   * later, fails each pairing attempt with `code` (worker/pairing.ts,
   * Failures) until this is called with null. Resolves once every live worker
   * said so.
   */
  async setWhatsAppOutage(code: FailureClass | null, timeoutMs = 5_000): Promise<void> {
    if (code !== null && !FAILURE_CLASSES.includes(code)) {
      throw new FleetError(
        "invalid_request",
        `outage must be one of ${FAILURE_CLASSES.join(", ")}, or null`,
      );
    }
    this.#whatsappOutage = code;
    const alive = [...this.#workers.values()].filter((w) => w.stdin && isAlive(w.info.state));
    const after = this.#seq;
    await Promise.all(alive.map((w) => this.#send(w, `whatsapp ${code ?? "ok"}`)));
    const told = new Set<string>();
    await this.waitFor((event) => {
      if (event.seq > after && event.type === "whatsapp" && event.outage === code) {
        told.add(event.worker);
      }
      return alive.every((w) => told.has(w.info.name));
    }, timeoutMs);
  }

  /**
   * The pairing attempt of the device fails with `code` on the worker that
   * runs it, and nowhere else. Returns that worker's name, or null.
   */
  failDevice(deviceId: string, code: FailureClass, timeoutMs = 5_000): Promise<string | null> {
    return this.#askAll(`fail ${deviceId} ${code}`, "fail_result", deviceId, timeoutMs, "failed");
  }

  list(): FleetWorkerInfo[] {
    return [...this.#workers.values()].map((w) => ({ ...w.info, devices: [...w.info.devices] }));
  }

  info(name: string): FleetWorkerInfo {
    const worker = this.#workers.get(name);
    if (!worker) throw new FleetError("not_found", `no worker named ${name}`);
    return { ...worker.info, devices: [...worker.info.devices] };
  }

  /** Resolve with the first event (already seen or future) matching `predicate`. */
  waitFor(predicate: (event: FleetEvent) => boolean, timeoutMs: number): Promise<FleetEvent> {
    const seen = this.events.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      let checked = this.#seq;
      const check = () => {
        for (const event of this.events) {
          if (event.seq > checked && predicate(event)) {
            cleanup();
            return resolve(event);
          }
        }
        checked = this.#seq;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new FleetError("timeout", `no matching fleet event within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  /** The first heartbeat of the current run of worker `name`. */
  waitForHeartbeat(name: string, timeoutMs: number): Promise<FleetEvent> {
    const spawnSeq = this.#workers.get(name)?.spawnSeq ?? this.#seq;
    return this.waitFor(
      (e) => e.worker === name && e.type === "heartbeat" && e.seq > spawnSeq,
      timeoutMs,
    );
  }

  /** Stop every worker gracefully (SIGKILL after `graceMs`). */
  async stopAll(graceMs = 5_000): Promise<void> {
    await Promise.all([...this.#workers.keys()].map((name) => this.stop(name, graceMs)));
    this.#stderr?.close();
    this.#stderr = null;
  }

  #running(name: string): WorkerProcess {
    const worker = this.#workers.get(name);
    if (!worker) throw new FleetError("not_found", `no worker named ${name}`);
    if (!isAlive(worker.info.state) || !worker.child) {
      throw new FleetError("conflict", `${name} is ${worker.info.state}`);
    }
    return worker;
  }

  async #send(worker: WorkerProcess, line: string): Promise<void> {
    if (!worker.stdin) throw new FleetError("conflict", `${worker.info.name} is not running`);
    await worker.stdin.write(new TextEncoder().encode(line + "\n"));
  }

  /**
   * The server's own Auth account (app_metadata.device_backend = name), made
   * with the secret key, which only this supervisor holds: a worker gets its
   * credentials and acts as its own server, nothing more.
   */
  #account(name: string): Promise<BackendAccount> {
    let account = this.#accounts.get(name);
    if (!account) {
      this.#admin ??= createClient(
        this.#options.env.SUPABASE_URL ?? "",
        this.#options.env.SUPABASE_SECRET_KEY ?? "",
        { auth: { persistSession: false, autoRefreshToken: false } },
      );
      account = createBackendAccount(this.#admin, name, `${name}.run-${this.#runId}`);
      // A failure is retried by the next spawn of that name.
      account.catch(() => this.#accounts.delete(name));
      this.#accounts.set(name, account);
    }
    return account;
  }

  #spawn(name: string, restarts: number): void {
    const { SUPABASE_SECRET_KEY: _operatorOnly, ...env } = this.#options.env;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", "--config", WORKER_CONFIG.pathname, WORKER_ENTRY.pathname],
      env: { ...env, WORKER_NAME: name, WORKER_EXIT_ON_STDIN_EOF: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const info: FleetWorkerInfo = {
      name,
      pid: child.pid,
      state: "starting",
      serverId: null,
      selfFencing: true,
      lastHeartbeatAt: null,
      heartbeatTimeoutMs: null,
      devices: [],
      restarts,
    };
    const worker: WorkerProcess = {
      info,
      child,
      stdin: child.stdin.getWriter(),
      exited: Promise.resolve(),
      spawnSeq: this.#seq,
    };
    const devices = new Set<string>();
    const stdout = this.#readLines(child.stdout, (line) => {
      let event: Record<string, unknown>;
      try {
        event = JSON.parse(line);
      } catch {
        return this.#record(name, { type: "stdout", line });
      }
      if (event.type === "heartbeat") {
        info.lastHeartbeatAt = Number(event.ts);
        info.serverId = String(event.serverId);
        info.heartbeatTimeoutMs = Number(event.heartbeatTimeoutMs);
        if (info.state === "starting") info.state = "running";
      } else if (event.type === "session_started") devices.add(String(event.deviceId));
      else if (event.type === "session_dropped") devices.delete(String(event.deviceId));
      info.devices = [...devices];
      this.#record(name, { ...event, restarts });
    });
    const stderr = this.#readLines(child.stderr, (line) => {
      if (this.#stderr) this.#stderr.writeSync(new TextEncoder().encode(`[${name}] ${line}\n`));
      else this.#record(name, { type: "stderr", line });
    });
    worker.exited = (async () => {
      const status = await child.status;
      await Promise.allSettled([stdout, stderr]);
      worker.stdin = null;
      worker.child = null;
      devices.clear();
      info.devices = [];
      info.pid = null;
      if (info.state !== "killed") info.state = "stopped";
      this.#record(name, { type: "exited", code: status.code, signal: status.signal });
    })();
    this.#workers.set(name, worker);
    this.#record(name, { type: "spawned", pid: child.pid, restarts });
    this.#account(name).then(
      ({ email, password }) =>
        worker.stdin?.write(
          new TextEncoder().encode(`credentials ${JSON.stringify({ email, password })}\n`),
        ),
      (error) => this.#record(name, { type: "error", step: "account", error: String(error) }),
    ).catch(() => {/* the worker exited before it got them */});
    if (this.#whatsappOutage) {
      this.#send(worker, `whatsapp ${this.#whatsappOutage}`).catch(() => {/* exited */});
    }
  }

  async #readLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void) {
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const chunk of stream) {
      buffer += decoder.decode(chunk, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        onLine(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
      }
    }
    if (buffer) onLine(buffer);
  }

  #record(worker: string, event: Record<string, unknown>): void {
    const stamped: FleetEvent = {
      ...event,
      ts: typeof event.ts === "number" ? event.ts : Date.now(),
      worker,
      type: String(event.type),
      seq: ++this.#seq,
    };
    this.events.push(stamped);
    if (this.events.length > this.#options.maxEvents) {
      this.events.splice(0, this.events.length - this.#options.maxEvents);
    }
    this.#options.onEvent?.(stamped);
    for (const waiter of [...this.#waiters]) waiter();
  }
}

function isAlive(state: WorkerState): boolean {
  return state === "starting" || state === "running" || state === "partitioned";
}

export class FleetError extends Error {
  constructor(
    readonly code: "not_found" | "conflict" | "timeout" | "invalid_request",
    message: string,
  ) {
    super(message);
    this.name = "FleetError";
  }
}
