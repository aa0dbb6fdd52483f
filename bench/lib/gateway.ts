/**
 * A private gateway for the benchmarks (local/gateway/main.ts on a free port)
 * in front of a benchmark database, serving the real get-device-qr next to the
 * bench-only `floor` function. The shared stack on :54321 is left alone.
 *
 * Functions come from a temporary functions directory and config.toml whose
 * entrypoints point at the real sources, so nothing is copied.
 */
import { spawnGateway } from "../../local/gateway/spawn.ts";
import { REPO } from "./pg.ts";

export interface BenchGateway {
  url: string;
  pid: number;
  /** Pids of the function processes, by name, once they have served a request. */
  functionPids(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

export const FUNCTIONS = {
  "get-device-qr": {
    entrypoint: `${REPO}/supabase/functions/get-device-qr/index.ts`,
    importMap: `${REPO}/supabase/functions/get-device-qr/deno.json`,
  },
  floor: {
    entrypoint: `${REPO}/bench/fixtures/floor/index.ts`,
    importMap: `${REPO}/bench/fixtures/floor/deno.json`,
  },
};

/** Gateways still running, stopped if the benchmark is interrupted (they do not die with it). */
const running = new Set<Deno.ChildProcess>();
let signalsInstalled = false;

function stopOnSignals(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      for (const child of running) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      }
      Deno.exit(130);
    });
  }
}

/** The state dir bench gateways share with the local stack: function logs land in <it>/gateway/functions. */
export async function gatewayStateDir(): Promise<string> {
  const { stdout } = await new Deno.Command(`${REPO}/local/db.sh`, { args: ["state-dir"] })
    .output();
  return new TextDecoder().decode(stdout).trim();
}

export async function startBenchGateway(dbUrl: string): Promise<BenchGateway> {
  const root = await Deno.makeTempDir({ prefix: "bench-functions-" });
  const toml: string[] = [];
  for (const [name, fn] of Object.entries(FUNCTIONS)) {
    // The gateway runs each function with its directory as cwd, and its deno.json from there:
    // the real one, its lock named by absolute path, so the graph is the locked one.
    await Deno.mkdir(`${root}/functions/${name}`, { recursive: true });
    const denoJson = JSON.parse(await Deno.readTextFile(fn.importMap));
    const lockPath = new URL(denoJson.lock.path, `file://${fn.importMap}`).pathname;
    await Deno.writeTextFile(
      `${root}/functions/${name}/deno.json`,
      JSON.stringify({ ...denoJson, lock: { ...denoJson.lock, path: lockPath } }),
    );
    toml.push(
      `[functions.${name}]`,
      `enabled = true`,
      `verify_jwt = false`,
      `entrypoint = "${fn.entrypoint}"`,
      `import_map = "${fn.importMap}"`,
      "",
    );
  }
  await Deno.writeTextFile(`${root}/config.toml`, toml.join("\n"));
  const requestLog = `${root}/requests.log`;
  const gateway = await spawnGateway({
    GATEWAY_STATE_DIR: await gatewayStateDir(),
    GATEWAY_ENV_FILE: "",
    GATEWAY_PREWARM: "0",
    GATEWAY_WATCH: "0",
    GATEWAY_REQUEST_LOG: requestLog,
    SUPABASE_DB_URL: dbUrl,
    FUNCTIONS_DIR: `${root}/functions`,
    FUNCTIONS_CONFIG: `${root}/config.toml`,
  }, (child) => {
    running.add(child);
    stopOnSignals();
  });
  const child = gateway.child;

  return {
    url: gateway.url,
    pid: child.pid,
    async functionPids() {
      const { stdout } = await new Deno.Command("ps", {
        args: ["-o", "pid=,args=", "--ppid", String(child.pid)],
      }).output();
      const pids: Record<string, number> = {};
      for (const line of new TextDecoder().decode(stdout).split("\n")) {
        const match = /^\s*(\d+)\s+(.*)$/.exec(line);
        if (!match) continue;
        for (const [name, fn] of Object.entries(FUNCTIONS)) {
          if (match[2].includes(fn.entrypoint)) pids[name] = Number(match[1]);
        }
      }
      return pids;
    },
    async stop() {
      await gateway.stop();
      running.delete(child);
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}
