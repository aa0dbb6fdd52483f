/**
 * The demo's own small server (dev-only, loopback, never deployed): serves the
 * page, hands the page the demo user's access token, runs the simulated fleet,
 * and proxies what the demo user may not call itself: fleet control and
 * `assignment_health()` with the secret key.
 *
 *   deno run -A local/demo/server.ts      (local/dev.sh runs it)
 *
 * Environment: DEMO_PORT (54330), DEMO_WORKERS (3), DEMO_HEARTBEAT_TIMEOUT_S (10),
 * DEMO_INCIDENT_WINDOW_S (30),
 * SUPABASE_URL / keys / SUPABASE_DB_URL (else .env.local), and the worker's
 * WORKER_* / QR_* timings.
 */
import { createClient } from "@supabase/supabase-js";
import { Fleet } from "../../worker/fleet.ts";
import { fleetControl } from "../../worker/fleet_control.ts";
import { stackEnv, workerEnv } from "../../worker/env.ts";
import { mintDemoToken } from "./token.ts";
import {
  DEMO_DEVICES,
  DEMO_USER,
  parkDemoDevices,
  restoreSettings,
  seedDemo,
  startDemoPairing,
} from "./seed.ts";

const ROOT = new URL("../../", import.meta.url);
const PAGE_DIR = new URL("./", import.meta.url);
const BUNDLE = new URL(".local/demo/app.js", ROOT);

export interface DemoServerOptions {
  port: number;
  workers: number;
  heartbeatTimeoutSeconds: number;
  /** assignment_settings.incident_window while the demo runs: how long a mended outage takes to end. */
  incidentWindowSeconds: number;
  /** Where workers' stderr is written. */
  logDir: string;
}

/** Bundles the page's TypeScript and supabase-js into one browser script. */
export async function bundlePage(): Promise<void> {
  await Deno.mkdir(new URL(".", BUNDLE), { recursive: true });
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--minify",
      "--output",
      BUNDLE.pathname,
      new URL("app.mts", PAGE_DIR).pathname,
    ],
    cwd: ROOT.pathname,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (code !== 0) throw new Error(`deno bundle failed: ${new TextDecoder().decode(stderr)}`);
}

export async function startDemoServer(options: DemoServerOptions) {
  const stack = stackEnv();
  if (!stack.publishableKey) throw new Error("SUPABASE_PUBLISHABLE_KEY is not set");
  const dbUrl = stack.dbUrl ?? "postgresql://postgres:postgres@127.0.0.1:54322/postgres";

  await bundlePage();
  const previous = await seedDemo(dbUrl, {
    heartbeatTimeoutSeconds: options.heartbeatTimeoutSeconds,
    incidentWindowSeconds: options.incidentWindowSeconds,
  });
  const service = createClient(stack.url, stack.secretKey, {
    auth: { persistSession: false, autoRefreshToken: false },
  });

  await Deno.mkdir(options.logDir, { recursive: true });
  const fleet = new Fleet({
    // A resumed session takes about as long as Baileys' reconnect (~2 s), so the
    // page shows the card `reconnecting` before it is `connected` again.
    env: { WORKER_RESUME_MS: "2000", ...workerEnv() },
    prefix: "demo-server",
    stderrLog: `${options.logDir}/workers.log`,
  });
  await fleet.start(options.workers);
  await startDemoPairing(dbUrl, fleet.list().map((worker) => worker.serverId!));

  const page = (name: string, type: string) => async () =>
    new Response(await Deno.readFile(new URL(name, PAGE_DIR)), {
      headers: { "content-type": type, "cache-control": "no-store" },
    });
  const routes: Record<string, () => Promise<Response>> = {
    "/": page("index.html", "text/html; charset=utf-8"),
    "/style.css": page("style.css", "text/css; charset=utf-8"),
    "/app.js": async () =>
      new Response(await Deno.readFile(BUNDLE), {
        headers: { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" },
      }),
    "/config.json": () =>
      Promise.resolve(json({
        supabaseUrl: stack.url,
        publishableKey: stack.publishableKey,
        user: DEMO_USER,
        devices: DEMO_DEVICES.map(({ id, name }) => ({ id, name })),
        // Readable only by pages of this origin: the demo server grants no CORS.
        fleetControlToken: fleet.controlToken,
      })),
    // The demo user's session, as a sign-in would give it.
    "/api/token": async () => json(await mintDemoToken(stack.url, DEMO_USER)),
    "/api/health": async () => {
      const { data, error } = await service.rpc("assignment_health");
      return json({
        health: error ? null : data,
        error: error?.message ?? null,
        fleet: fleet.list(),
        whatsapp_outage: fleet.whatsappOutage,
      });
    },
  };

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port, onListen: () => {} },
    async (request) => {
      try {
        const fleetResponse = await fleetControl(fleet, request);
        if (fleetResponse) return fleetResponse;
        const route = routes[new URL(request.url).pathname];
        if (route && request.method === "GET") return await route();
        return json({ error: { code: "not_found" } }, 404);
      } catch (error) {
        return json({ error: { code: "internal_error", message: String(error) } }, 500);
      }
    },
  );

  let stopped: Promise<void> | null = null;
  return {
    url: `http://127.0.0.1:${options.port}/`,
    fleet,
    stop(): Promise<void> {
      stopped ??= (async () => {
        await fleet.stopAll();
        await server.shutdown();
        await restoreSettings(dbUrl, previous).catch(() => {});
        await parkDemoDevices(dbUrl).catch(() => {});
      })();
      return stopped;
    },
  };
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

if (import.meta.main) {
  const number = (name: string, fallback: number) => Number(Deno.env.get(name) ?? fallback);
  const demo = await startDemoServer({
    port: number("DEMO_PORT", 54330),
    workers: number("DEMO_WORKERS", 3),
    heartbeatTimeoutSeconds: number("DEMO_HEARTBEAT_TIMEOUT_S", 10),
    incidentWindowSeconds: number("DEMO_INCIDENT_WINDOW_S", 30),
    logDir: Deno.env.get("DEMO_LOG_DIR") ?? new URL(".local/demo", ROOT).pathname,
  });
  const stop = async () => {
    await demo.stop();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  console.log(`DEMO_URL=${demo.url}`);
}
