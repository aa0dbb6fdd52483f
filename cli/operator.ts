/**
 * Operator command line: the verbs of the old fix script, over the
 * `reassign-device` edge function with the project's secret key, so that an
 * operator changes devices through the same audited SQL as everybody else;
 * and the backend servers' accounts, through Supabase Auth's admin API and
 * `set_backend_server_enabled`.
 *
 *   deno run -A cli/operator.ts reset-device <device-id> [--dry-run]
 *   deno run -A cli/operator.ts reset-inactive [--dry-run]   every orphaned device
 *   deno run -A cli/operator.ts reset-all [--dry-run]        every connecting device
 *   deno run -A cli/operator.ts status                       assignment_health() as tables
 *   deno run -A cli/operator.ts server add <name>            its Auth account, credentials shown once
 *   deno run -A cli/operator.ts server disable <name>        refused from its next call on
 *   deno run -A cli/operator.ts server enable <name>
 *
 * Add `--json` to print the answer as it is. Reads SUPABASE_URL and
 * SUPABASE_SECRET_KEY from the environment, else from the file the local
 * stack's gateway writes (`.env.local`, or GATEWAY_ENV_FILE; worker/env.ts).
 */
import { createClient } from "@supabase/supabase-js";
import { localEnvFile, readEnvFile } from "../worker/env.ts";
import { BackendAccountError, backendEmail, createBackendAccount } from "./backend_accounts.ts";

export interface CliIo {
  env: (name: string) => string | undefined;
  /** The variables of the local stack's env file (worker/env.ts), empty when there is none. */
  readEnvFile: () => Record<string, string>;
  fetch: typeof fetch;
  out: (line: string) => void;
  err: (line: string) => void;
}

const USAGE = `usage: operator <command> [--dry-run] [--json]

commands:
  reset-device <device-id>   restart pairing of one device on a live server
  reset-inactive             reassign every connecting device whose server is gone
  reset-all                  reassign every connecting device
  status                     fleet incidents, servers, devices by status and server,
                             orphaned and stale counts, cron jobs (assignment_health())
  server add <name>          create the backend server's Auth account and enable it; prints
                             its credentials and the env lines it needs, once
  server disable <name>      refuse the server from its next call on; its devices are healed
                             as from a dead server
  server enable <name>       let a disabled server back

options:
  --dry-run   show what would change, change nothing (reset-* only)
  --json      print the raw JSON answer

environment (or .env.local):
  SUPABASE_URL               the project URL, e.g. https://<ref>.supabase.co
  SUPABASE_SECRET_KEY        the project's secret key (sb_secret_...)
  SUPABASE_PUBLISHABLE_KEY   optional: put in the env lines \`server add\` prints`;

type ServerVerb = "add" | "disable" | "enable";

type Command =
  | { verb: "reset-device"; deviceId: string; dryRun: boolean; json: boolean }
  | { verb: "reset-inactive" | "reset-all"; dryRun: boolean; json: boolean }
  | { verb: "status"; json: boolean }
  | { verb: "server"; action: ServerVerb; name: string; json: boolean };

class UsageError extends Error {}

export function parseArgs(args: string[]): Command | "help" {
  const flags = new Set(args.filter((a) => a.startsWith("-")));
  const words = args.filter((a) => !a.startsWith("-"));
  if (flags.has("--help") || flags.has("-h") || words.length === 0) return "help";
  for (const flag of flags) {
    if (!["--dry-run", "--json"].includes(flag)) throw new UsageError(`unknown option ${flag}`);
  }
  const dryRun = flags.has("--dry-run");
  const json = flags.has("--json");
  const [verb, ...rest] = words;
  switch (verb) {
    case "reset-device":
      if (rest.length !== 1) throw new UsageError("reset-device needs exactly one device id");
      return { verb, deviceId: rest[0], dryRun, json };
    case "reset-inactive":
    case "reset-all":
      if (rest.length > 0) throw new UsageError(`${verb} takes no arguments`);
      return { verb, dryRun, json };
    case "status":
      if (rest.length > 0) throw new UsageError("status takes no arguments");
      if (dryRun) throw new UsageError("status changes nothing; --dry-run does not apply");
      return { verb, json };
    case "server": {
      const [action, name, ...extra] = rest;
      if (!["add", "disable", "enable"].includes(action)) {
        throw new UsageError("server takes add, disable or enable");
      }
      if (name === undefined || extra.length > 0) {
        throw new UsageError(`server ${action} needs exactly one server name`);
      }
      if (dryRun) throw new UsageError(`server ${action} has no --dry-run`);
      const problem = serverNameProblem(name);
      if (problem) throw new UsageError(problem);
      return { verb, action: action as ServerVerb, name, json };
    }
    default:
      throw new UsageError(`unknown command ${verb}`);
  }
}

/**
 * The server-name rule of the SQL (server_heartbeat: 1 to 200 characters, not
 * blank), checked here too so that `server add` never creates an account for
 * a name the database would refuse.
 */
export function serverNameProblem(name: string): string | null {
  if (name.trim().length === 0 || name.length > 200) {
    return "a server name is 1 to 200 characters and not blank";
  }
  return null;
}

interface Target {
  url: string;
  secretKey: string;
  /** The key a backend server's client uses, by the name it was found under. */
  publishableKey: { name: string; value: string } | null;
}

function target(io: CliIo): Target | string {
  const file = io.readEnvFile();
  const pick = (name: string) => io.env(name) || file[name] || "";
  const url = pick("SUPABASE_URL");
  const secretKey = pick("SUPABASE_SECRET_KEY");
  const missing = [!url && "SUPABASE_URL", !secretKey && "SUPABASE_SECRET_KEY"].filter(Boolean);
  if (missing.length > 0) {
    return `missing ${missing.join(" and ")}: set ${
      missing.length > 1 ? "them" : "it"
    } in the environment or in .env.local (local stack: run \`local/gateway.sh start\`, which writes .env.local).`;
  }
  if (secretKey.startsWith("sb_publishable_")) {
    return "SUPABASE_SECRET_KEY holds a publishable key; operators need the secret key (sb_secret_...).";
  }
  const publishableName = ["SUPABASE_PUBLISHABLE_KEY", "SUPABASE_ANON_KEY"].find((name) =>
    pick(name)
  );
  return {
    url: url.replace(/\/+$/, ""),
    secretKey,
    publishableKey: publishableName
      ? { name: publishableName, value: pick(publishableName) }
      : null,
  };
}

function requestBody(command: Exclude<Command, { verb: "server" }>): Record<string, unknown> {
  switch (command.verb) {
    case "reset-device":
      return { scope: "device", device_id: command.deviceId, dry_run: command.dryRun };
    case "reset-inactive":
      return { scope: "inactive", dry_run: command.dryRun };
    case "reset-all":
      return { scope: "all_connecting", dry_run: command.dryRun };
    case "status":
      return { scope: "health" };
  }
}

export async function run(args: string[], io: CliIo): Promise<number> {
  let command: Command | "help";
  try {
    command = parseArgs(args);
  } catch (error) {
    io.err(`operator: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (command === "help") {
    io.out(USAGE);
    return 0;
  }
  const where = target(io);
  if (typeof where === "string") {
    io.err(`operator: ${where}`);
    return 2;
  }
  if (command.verb === "server") return await serverCommand(command, where, io);

  let response: Response;
  try {
    response = await io.fetch(`${where.url}/functions/v1/reassign-device`, {
      method: "POST",
      headers: { apikey: where.secretKey, "content-type": "application/json" },
      body: JSON.stringify(requestBody(command)),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (error) {
    io.err(`operator: cannot reach ${where.url} (${(error as Error).name}); is the stack running?`);
    return 1;
  }

  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    io.err(`operator: ${response.status} from ${where.url}, not JSON`);
    return 1;
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: string; message?: string; details?: unknown } })
      ?.error;
    const retry = response.headers.get("retry-after");
    io.err(
      `operator: ${response.status} ${error?.code ?? "error"}: ${error?.message ?? text}` +
        (retry ? ` (retry after ${retry} s)` : ""),
    );
    const hint = (error?.details as { hint?: string } | null)?.hint;
    if (hint) io.err(`hint: ${hint}`);
    return 1;
  }
  if (command.json) {
    io.out(JSON.stringify(body, null, 2));
    return 0;
  }
  io.out(
    command.verb === "status" ? formatHealth(body as Health) : formatReassign(body as Reassigned),
  );
  return 0;
}

// --- backend server accounts ---------------------------------------------------------

async function serverCommand(
  command: Extract<Command, { verb: "server" }>,
  where: Target,
  io: CliIo,
): Promise<number> {
  const supabase = createClient(where.url, where.secretKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    global: { fetch: io.fetch },
  });
  const { name } = command;
  let account: Record<string, unknown> = {};

  if (command.action === "add") {
    let created;
    try {
      created = await createBackendAccount(supabase, name);
    } catch (error) {
      if (!(error instanceof BackendAccountError)) throw error;
      io.err(
        `operator: cannot create the account of ${name}: ${
          error.status ?? ""
        } ${error.code}: ${error.message}`,
      );
      if (error.code === "email_exists") {
        io.err(
          `hint: ${name} already has an account (${await backendEmail(
            name,
          )}); its password was shown when it was added. ` +
            "Use `server enable` to let it back, or reset its password in the dashboard (Authentication → Users).",
        );
      }
      return 1;
    }
    const { userId, email, password } = created;
    account = { user_id: userId, email, password };
    // Printed before enabling, so the credentials are not lost if that fails.
    const key = where.publishableKey;
    const env = [
      `SUPABASE_URL=${where.url}`,
      key ? `${key.name}=${key.value}` : "SUPABASE_PUBLISHABLE_KEY=<the project's publishable key>",
      `BACKEND_SERVER_NAME=${name}`,
      `BACKEND_EMAIL=${email}`,
      `BACKEND_PASSWORD=${password}`,
    ];
    if (!command.json) {
      io.out(
        `Created the Auth account of backend server ${name} (user ${userId}).\n` +
          "Its password is shown only now: put these lines in the server's secrets.\n\n" +
          env.join("\n") + "\n",
      );
    }
    account.env = env;
  }

  const enabled = command.action !== "disable";
  const { data, error } = await supabase.rpc("set_backend_server_enabled", {
    p_server_name: name,
    p_enabled: enabled,
  });
  if (error) {
    io.err(
      `operator: set_backend_server_enabled(${name}, ${enabled}) failed: ${
        error.code ? `${error.code}: ` : ""
      }${error.message}`,
    );
    if (error.hint) io.err(`hint: ${error.hint}`);
    if (command.json && command.action === "add") io.out(JSON.stringify(account, null, 2));
    return 1;
  }
  if (command.json) {
    io.out(JSON.stringify({ server: name, enabled, ...account, result: data }, null, 2));
    return 0;
  }
  io.out(
    enabled
      ? `server ${name} enabled`
      : `server ${name} disabled: refused from its next call; its devices are healed as from a dead server`,
  );
  return 0;
}

// --- output -------------------------------------------------------------------------

interface Reassigned {
  scope: string;
  dry_run: boolean;
  count: number;
  devices: { id: string; from: string | null; to: string | null }[];
  /** Set on a dry run that found nothing to move the devices to, e.g. `no_active_servers`. */
  reason?: string;
}

const REASONS: Record<string, string> = {
  no_active_servers: "no server is live to take them now; a real run would answer 503",
};

export function formatReassign(result: Reassigned): string {
  const verb = result.dry_run ? "would reassign" : "reassigned";
  const lines = [
    `${result.dry_run ? "DRY RUN: " : ""}${verb} ${result.count} device${
      result.count === 1 ? "" : "s"
    } (scope ${result.scope})`,
  ];
  if (result.reason) lines.push(`reason: ${REASONS[result.reason] ?? result.reason}`);
  if (result.devices.length > 0) {
    lines.push("");
    lines.push(table(
      ["device", "from server", "to server"],
      result.devices.map((d) => [d.id, d.from ?? "(none)", d.to ?? "(none: waits for a server)"]),
    ));
  }
  return lines.join("\n");
}

interface Health {
  now?: string;
  settings?: Record<string, unknown>;
  servers?: {
    id: string;
    name: string;
    live: boolean;
    is_active?: boolean;
    is_healthy?: boolean;
    current_load?: number | null;
    max_capacity?: number | null;
    heartbeat_age_ms?: number | null;
    connecting_devices?: number;
  }[];
  devices_by_status?: Record<string, number>;
  devices_by_server?: {
    server_id: string | null;
    server_name: string | null;
    status: string;
    count: number;
  }[];
  orphaned?: number;
  stale?: number;
  incidents?: { code: string; since: string; servers: string[]; devices_held: number }[];
  cron_jobs?: {
    jobname: string;
    schedule: string;
    active: boolean;
    last_run?: {
      status?: string;
      start_time?: string;
      end_time?: string;
      return_message?: string;
    } | null;
  }[];
}

export function formatHealth(health: Health): string {
  const out: string[] = [];
  out.push(`assignment health at ${health.now ?? "?"}`);
  out.push(`orphaned devices: ${health.orphaned ?? "?"}    stale devices: ${health.stale ?? "?"}`);

  // A fleet incident first: it is why many devices wait (docs/contract.md).
  const incidents = health.incidents ?? [];
  if (incidents.length > 0) {
    out.push(
      "",
      "FLEET INCIDENTS (devices held wait at no cost; the next QR or connection ends one)",
    );
    out.push(table(
      ["code", "since", "servers", "devices held"],
      incidents.map((i) => [i.code, i.since, i.servers.join(", "), String(i.devices_held)]),
    ));
  }

  out.push("", "SERVERS");
  const servers = health.servers ?? [];
  out.push(
    servers.length === 0 ? "(no backend servers registered)" : table(
      ["name", "live", "active", "healthy", "load", "heartbeat age", "connecting", "id"],
      servers.map((s) => [
        s.name,
        s.live ? "yes" : "NO",
        yesNo(s.is_active),
        yesNo(s.is_healthy),
        `${s.current_load ?? 0}/${s.max_capacity ?? "∞"}`,
        age(s.heartbeat_age_ms),
        String(s.connecting_devices ?? 0),
        s.id,
      ]),
    ),
  );

  out.push("", "DEVICES BY STATUS");
  const byStatus = Object.entries(health.devices_by_status ?? {});
  out.push(
    byStatus.length === 0
      ? "(no devices)"
      : table(["status", "devices"], byStatus.map(([status, n]) => [status, String(n)])),
  );

  out.push("", "DEVICES BY SERVER");
  const byServer = health.devices_by_server ?? [];
  out.push(
    byServer.length === 0 ? "(no devices)" : table(
      ["server", "status", "devices"],
      byServer.map((row) => [
        row.server_name ?? (row.server_id ? row.server_id : "(unassigned)"),
        row.status,
        String(row.count),
      ]),
    ),
  );

  out.push("", "CRON JOBS");
  const jobs = health.cron_jobs ?? [];
  out.push(
    jobs.length === 0 ? "(no cron jobs: is pg_cron installed?)" : table(
      ["job", "schedule", "active", "last run", "result", "message"],
      jobs.map((job) => [
        job.jobname,
        job.schedule,
        yesNo(job.active),
        job.last_run?.start_time ?? "never",
        job.last_run?.status ?? "-",
        oneLine(job.last_run?.return_message ?? ""),
      ]),
    ),
  );

  if (health.settings && Object.keys(health.settings).length > 0) {
    out.push("", "SETTINGS");
    out.push(table(
      ["setting", "value"],
      Object.entries(health.settings).map((
        [k, v],
      ) => [k, typeof v === "string" ? v : JSON.stringify(v)]),
    ));
  }
  return out.join("\n");
}

function yesNo(value: boolean | undefined): string {
  return value === undefined ? "?" : value ? "yes" : "no";
}

function age(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

function oneLine(text: string): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > 60 ? `${flat.slice(0, 57)}...` : flat;
}

/** Left-aligned columns separated by two spaces, with a rule under the header. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (c ?? "").padEnd(widths[i])).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

// --- entry point ----------------------------------------------------------------------

if (import.meta.main) {
  Deno.exit(
    await run(Deno.args, {
      env: (name) => Deno.env.get(name),
      readEnvFile: () => readEnvFile(localEnvFile()),
      fetch,
      out: (line) => console.log(line),
      err: (line) => console.error(line),
    }),
  );
}
