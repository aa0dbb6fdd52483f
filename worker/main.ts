/**
 * One simulated backend server as a process: the reference worker against the
 * real stack, with a few simulator controls on stdin.
 *
 *   deno run -A worker/main.ts            (reads SUPABASE_URL and the secret key)
 *
 * Environment: WORKER_NAME, WORKER_MAX_CAPACITY, WORKER_CLAIM_BATCH, WORKER_POLL_MS,
 * WORKER_HEARTBEAT_MS, WORKER_LEASE_FRACTION, QR_FIRST_TTL_MS, QR_ROTATION_MS,
 * QR_MAX, QR_GENERATION_MS.
 *
 * stdin, one command a line: `scan <device_id>`, `partition` (heartbeats and
 * claims cut, self-fencing suspended: a server that believes it is still live),
 * `partition self-fence` (same cut, the worker fences itself as it should),
 * `heal`, `status`. stdout: one JSON object a line per worker event.
 * SIGTERM or SIGINT: graceful `server_shutdown`, then exit 0; so does the end of
 * stdin when WORKER_EXIT_ON_STDIN_EOF=1.
 */
import { createClient } from "@supabase/supabase-js";
import { supabaseBackend } from "../packages/backend/src/api.ts";
import { stackEnv } from "./env.ts";
import { FaultyBackend } from "./faults.ts";
import { WHATSAPP_PAIRING } from "./pairing.ts";
import { BackendWorker, type WorkerEvent } from "./worker.ts";

function numberEnv(name: string): number | undefined {
  const raw = Deno.env.get(name);
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${name} must be a number, got ${raw}`);
  return value;
}

const env = stackEnv();
const serverName = Deno.env.get("WORKER_NAME") ?? `worker-${Deno.hostname()}-${Deno.pid}`;
const client = createClient(env.url, env.secretKey, {
  auth: { persistSession: false, autoRefreshToken: false },
});
const backend = new FaultyBackend(supabaseBackend(client));

function emit(event: WorkerEvent | { type: string; [key: string]: unknown }): void {
  console.log(JSON.stringify({ ts: Date.now(), worker: serverName, ...event }));
}

const worker = new BackendWorker(
  backend,
  {
    serverName,
    maxCapacity: numberEnv("WORKER_MAX_CAPACITY") ?? null,
    claimBatch: numberEnv("WORKER_CLAIM_BATCH") ?? 100,
    pollIntervalMs: numberEnv("WORKER_POLL_MS") ?? 1_000,
    heartbeatIntervalMs: numberEnv("WORKER_HEARTBEAT_MS"),
    leaseSafetyFraction: numberEnv("WORKER_LEASE_FRACTION") ?? 0.8,
    pairing: {
      firstQrTtlMs: numberEnv("QR_FIRST_TTL_MS") ?? WHATSAPP_PAIRING.firstQrTtlMs,
      rotationMs: numberEnv("QR_ROTATION_MS") ?? WHATSAPP_PAIRING.rotationMs,
      maxQrs: numberEnv("QR_MAX") ?? WHATSAPP_PAIRING.maxQrs,
      qrGenerationMs: numberEnv("QR_GENERATION_MS") ?? WHATSAPP_PAIRING.qrGenerationMs,
    },
    metadata: { simulator: true, pid: Deno.pid },
  },
  undefined,
  emit,
);

let stopping = false;
async function stop(signal: string) {
  if (stopping) return;
  stopping = true;
  emit({ type: "stopping", signal });
  await worker.shutdown();
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
Deno.addSignalListener("SIGINT", () => stop("SIGINT"));

async function handle(line: string): Promise<void> {
  const [command, arg] = line.trim().split(/\s+/);
  switch (command) {
    case "scan":
      emit({ type: "scan_result", deviceId: arg, connected: await worker.scan(arg ?? "") });
      break;
    case "partition":
      backend.partitioned = true;
      worker.config.selfFencing = arg === "self-fence";
      emit({ type: "partitioned", selfFencing: worker.config.selfFencing });
      break;
    case "heal":
      backend.partitioned = false;
      worker.config.selfFencing = true;
      emit({ type: "healed" });
      break;
    case "status":
      emit({ type: "status", ...worker.snapshot(), partitioned: backend.partitioned });
      break;
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
  if (Deno.env.get("WORKER_EXIT_ON_STDIN_EOF") === "1") await stop("stdin closed");
})();

emit({ type: "started", pid: Deno.pid });
await worker.run();
