/**
 * One simulated backend server as a process: the package's BackendClient with
 * simulated WhatsApp sockets (pairing.ts) as its device handler, against the
 * real stack, with a few simulator controls on stdin.
 *
 *   deno run -A worker/main.ts
 *
 * Signs in as its server's own backend account (Supabase Auth, password grant;
 * `operator server add` prints the lines): SUPABASE_URL, SUPABASE_PUBLISHABLE_KEY
 * (or SUPABASE_ANON_KEY), BACKEND_EMAIL, BACKEND_PASSWORD. The fleet simulator
 * creates an account per worker and sends it as the first stdin line,
 * `credentials {"email","password"}`, instead. It never holds the secret key.
 *
 * Environment: WORKER_NAME, WORKER_MAX_CAPACITY, WORKER_CLAIM_BATCH, WORKER_POLL_MS,
 * WORKER_HEARTBEAT_MS, WORKER_LEASE_FRACTION, QR_FIRST_TTL_MS, QR_ROTATION_MS,
 * QR_MAX, QR_GENERATION_MS, WORKER_RESUME_MS, WORKER_SESSION_TRAFFIC_MS (session_traffic.ts).
 *
 * stdin, one command a line: `scan <device_id>`, `enter-code <device_id> <code>`, `partition` (heartbeats and
 * claims cut, self-fencing suspended: a server that believes it is still live),
 * `partition self-fence` (same cut, the worker fences itself as it should),
 * `heal`, `whatsapp <failure class>` (WhatsApp refuses every pairing attempt
 * with it: pairing.ts, Failures), `whatsapp ok`, `fail <device_id> <failure
 * class>` (this server's attempt for that device fails), `status`. stdout: one
 * JSON object a line per worker event.
 * SIGTERM or SIGINT: graceful `server_shutdown`, then exit 0; so does the end of
 * stdin when WORKER_EXIT_ON_STDIN_EOF=1.
 */
import { createClient } from "@supabase/supabase-js";
import {
  BackendClient,
  type BackendClientEvent,
  FAILURE_CLASSES,
  type FailureClass,
  supabaseBackend,
} from "@device-qr/backend";
import { FaultyBackend } from "./faults.ts";
import { runSessionTraffic } from "./session_traffic.ts";
import { DEFAULT_SIMULATOR_CONFIG, SimulatedWhatsApp, WHATSAPP_PAIRING } from "./pairing.ts";

function numberEnv(name: string): number | undefined {
  const raw = Deno.env.get(name);
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value)) {
    throw new Error(`${name} must be a number, got ${raw}`);
  }
  return value;
}

const url = Deno.env.get("SUPABASE_URL");
const apiKey = Deno.env.get("SUPABASE_PUBLISHABLE_KEY") ?? Deno.env.get("SUPABASE_ANON_KEY");
if (!url || !apiKey) {
  throw new Error("SUPABASE_URL and SUPABASE_PUBLISHABLE_KEY (or SUPABASE_ANON_KEY) must be set");
}
const serverName = Deno.env.get("WORKER_NAME") ??
  `worker-${Deno.hostname()}-${Deno.pid}`;
// supabase-js keeps the session and refreshes the access token before it expires.
const client = createClient(url, apiKey, {
  auth: { persistSession: false, autoRefreshToken: true },
});
const backend = new FaultyBackend(supabaseBackend(client), emit);

let signedIn: (credentials: { email: string; password: string }) => void;
const credentials = new Promise<{ email: string; password: string }>((resolve) =>
  signedIn = resolve
);
const envEmail = Deno.env.get("BACKEND_EMAIL");
const envPassword = Deno.env.get("BACKEND_PASSWORD");
if (envEmail && envPassword) signedIn!({ email: envEmail, password: envPassword });

function emit(
  event: BackendClientEvent | { type: string; [key: string]: unknown },
): void {
  console.log(JSON.stringify({ ts: Date.now(), worker: serverName, ...event }));
}

const whatsapp = new SimulatedWhatsApp(
  backend,
  {
    pairing: {
      firstQrTtlMs: numberEnv("QR_FIRST_TTL_MS") ??
        WHATSAPP_PAIRING.firstQrTtlMs,
      rotationMs: numberEnv("QR_ROTATION_MS") ?? WHATSAPP_PAIRING.rotationMs,
      maxQrs: numberEnv("QR_MAX") ?? WHATSAPP_PAIRING.maxQrs,
      qrGenerationMs: numberEnv("QR_GENERATION_MS") ??
        WHATSAPP_PAIRING.qrGenerationMs,
    },
    resumeMs: numberEnv("WORKER_RESUME_MS") ?? DEFAULT_SIMULATOR_CONFIG.resumeMs,
  },
  undefined,
  emit,
);

const server = new BackendClient({
  backend,
  handler: whatsapp,
  onEvent: emit,
  config: {
    serverName,
    maxCapacity: numberEnv("WORKER_MAX_CAPACITY") ?? null,
    claimBatch: numberEnv("WORKER_CLAIM_BATCH") ?? 100,
    pollIntervalMs: numberEnv("WORKER_POLL_MS") ?? 1_000,
    heartbeatIntervalMs: numberEnv("WORKER_HEARTBEAT_MS"),
    leaseSafetyFraction: numberEnv("WORKER_LEASE_FRACTION") ?? 0.8,
    metadata: { simulator: true, pid: Deno.pid },
  },
});

let stopping = false;
async function stop(signal: string) {
  if (stopping) return;
  stopping = true;
  emit({ type: "stopping", signal });
  await server.shutdown();
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
Deno.addSignalListener("SIGINT", () => stop("SIGINT"));

async function handle(line: string): Promise<void> {
  const [command, arg, code] = line.trim().split(/\s+/);
  switch (command) {
    case "scan":
      emit({
        type: "scan_result",
        deviceId: arg,
        connected: await whatsapp.scan(arg ?? ""),
      });
      break;
    case "enter-code":
      emit({
        type: "code_entry_result",
        deviceId: arg,
        connected: await whatsapp.enterCode(arg ?? "", code ?? ""),
      });
      break;
    case "partition":
      backend.partitioned = true;
      server.config.selfFencing = arg === "self-fence";
      emit({ type: "partitioned", selfFencing: server.config.selfFencing });
      break;
    case "heal":
      backend.partitioned = false;
      server.config.selfFencing = true;
      emit({ type: "healed" });
      break;
    case "whatsapp": {
      const outage = arg === "ok" ? null : arg as FailureClass;
      if (outage !== null && !FAILURE_CLASSES.includes(outage)) {
        emit({ type: "unknown_command", command: line.trim() });
        break;
      }
      whatsapp.setOutage(outage);
      emit({ type: "whatsapp", outage });
      break;
    }
    case "fail": {
      const failure = code as FailureClass;
      emit({
        type: "fail_result",
        deviceId: arg,
        failed: FAILURE_CLASSES.includes(failure) && await whatsapp.fail(arg ?? "", failure),
      });
      break;
    }
    case "status":
      emit({
        type: "status",
        ...server.snapshot(),
        partitioned: backend.partitioned,
        whatsappOutage: whatsapp.outage,
      });
      break;
    case "credentials": {
      const value = JSON.parse(line.trim().slice("credentials".length));
      signedIn({ email: String(value.email), password: String(value.password) });
      break;
    }
    case "":
    case undefined:
      break;
    default:
      emit({ type: "unknown_command", command });
  }
}

(async () => {
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
  let buffer = "";
  for await (const chunk of lines) {
    buffer += chunk;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + 1);
      await handle(line).catch((error) =>
        emit({ type: "error", step: "stdin", error: String(error) })
      );
    }
  }
  // The fleet simulator sets this so that its workers never outlive it.
  if (Deno.env.get("WORKER_EXIT_ON_STDIN_EOF") === "1") {
    await stop("stdin closed");
  }
})();

emit({ type: "started", pid: Deno.pid });
// A server that boots while Auth is unreachable keeps trying; wrong
// credentials will not get better, so those end the process.
for (const login = await credentials;;) {
  const { error } = await client.auth.signInWithPassword(login);
  if (!error) break;
  const detail = `${error.code ?? error.status ?? "network"}: ${error.message}`;
  emit({ type: "sign_in_failed", error: detail });
  if (error.status !== undefined && error.status >= 400 && error.status < 500) Deno.exit(1);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
}
const trafficMs = numberEnv("WORKER_SESSION_TRAFFIC_MS");
await Promise.all([
  server.run(),
  whatsapp.run(server.stopped),
  trafficMs ? runSessionTraffic(server, backend, trafficMs, server.stopped) : undefined,
]);
