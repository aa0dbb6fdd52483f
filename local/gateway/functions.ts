/**
 * `/functions/v1/<name>`: each function of the functions directory runs in its
 * own Deno process with only the environment the platform gives a function
 * (plus the process plumbing below), configured by `supabase/config.toml`
 * (`[functions.<name>]` `enabled`, `verify_jwt`, `entrypoint`, `import_map`)
 * and its own `deno.json`.
 *
 * Functions run on the Deno the hosted edge runtime embeds (EDGE_RUNTIME_DENO,
 * installed by local/setup.sh from local/edge-runtime/package-lock.json), not
 * on the tooling's Deno, and only from the module cache: `local/setup.sh` (or
 * `deno run -A local/gateway/functions.ts cache`) downloads their dependencies
 * as each function's frozen deno.lock pins them (functionLock); a function
 * process reads the same lock and never downloads (`--cached-only`), so a
 * missing install step fails as a BOOT_ERROR instead of hiding behind a warm
 * cache, and a new upstream release cannot change what runs.
 *
 * The platform's limits apply, and its own errors keep the platform's shape:
 *
 *   FUNCTION_MEMORY_LIMIT_MB   memory per function process (256)
 *   FUNCTION_WALL_CLOCK_MS     time for a function to answer a request (150000)
 *
 * A process is started on first request (or ahead, by `prewarm`) and reused.
 * Editing a function's files (or `_shared/`, or config.toml) retires its
 * process, so the next request runs the new code, like `supabase functions serve`.
 * A process that dies fails its in-flight requests (WORKER_ERROR, or
 * WORKER_LIMIT when it went over its memory) and is started again on the next
 * request; the gateway itself keeps serving.
 */
import { decodeProtectedHeader } from "jose";
import { parse as parseToml } from "smol-toml";
import { corsHeaders } from "./cors.ts";
import { type CredentialRejected, requireJwt } from "./credentials.ts";
import type { JwtVerifier } from "./jwt.ts";
import { LISTENING_MARKER } from "./function_runner.ts";

const RUNNER = new URL("./function_runner.ts", import.meta.url).pathname;
const BOOT_TIMEOUT_MS = 60_000;
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

/**
 * The Deno of supabase/edge-runtime (2.1.4): the linux-x64 binary package of
 * npm's `deno` (local/edge-runtime/package.json says why not `deno` itself).
 * The binary, not a Node shim, so the pid the memory watchdog reads is the function's.
 */
export const EDGE_RUNTIME_DENO = new URL(
  "../edge-runtime/node_modules/@deno/linux-x64-glibc/deno",
  import.meta.url,
).pathname;

/**
 * The platform's limits. Memory: `SUPABASE_RESOURCE_LIMIT_MEM_MB = "256"` in
 * supabase/edge-runtime .cargo/config.toml (and `memoryLimitMb = 256` in the
 * Supabase CLI's internal/functions/serve/templates/main.ts). Wall clock per
 * request: the hosted platform's 150 s request idle timeout
 * (supabase.com/docs/guides/functions/limits), answered with 504.
 */
export const PLATFORM_LIMITS = { memoryLimitMb: 256, wallClockMs: 150_000 };

/**
 * What the process needs to reach the network and its module cache on this
 * machine (certificates, proxies, the cache folder), never configuration.
 * Passed through from the gateway's own environment when set.
 */
export const PROCESS_PLUMBING = [
  "NODE_EXTRA_CA_CERTS",
  "DENO_CERT",
  "DENO_TLS_CA_STORE",
  "SSL_CERT_FILE",
  "SSL_CERT_DIR",
  "HTTPS_PROXY",
  "HTTP_PROXY",
  "NO_PROXY",
  "https_proxy",
  "http_proxy",
  "no_proxy",
  // Deno keys its npm cache by registry host: a machine behind a mirror needs it to find the cache.
  "NPM_CONFIG_REGISTRY",
  "DENO_DIR",
  "TMPDIR",
] as const;

/** The plumbing part of a function's environment, taken from `source` (the gateway's own). */
export function processPlumbing(
  source: Record<string, string> = Deno.env.toObject(),
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of PROCESS_PLUMBING) {
    if (source[name] !== undefined) env[name] = source[name];
  }
  // Deno 2.1.4 trusts NODE_EXTRA_CA_CERTS for npm downloads only, not for
  // fetch(); DENO_CERT adds the same extra CA to its store for both.
  if (env.DENO_CERT === undefined && env.NODE_EXTRA_CA_CERTS !== undefined) {
    env.DENO_CERT = env.NODE_EXTRA_CA_CERTS;
  }
  // The shared module cache that setup filled: Deno's own default, named
  // explicitly because the process gets no HOME.
  env.DENO_DIR ??= `${source.XDG_CACHE_HOME ?? `${source.HOME ?? "/root"}/.cache`}/deno`;
  env.NO_COLOR = "1";
  return env;
}

export interface FunctionConfig {
  name: string;
  dir: string;
  entrypoint: string;
  verifyJwt: boolean;
  /** `--config` for the process: the function's own deno.json, when it has one. */
  denoConfig: string | null;
  importMap: string | null;
}

export interface FunctionLimits {
  memoryLimitMb: number;
  wallClockMs: number;
}

/** FUNCTION_MEMORY_LIMIT_MB / FUNCTION_WALL_CLOCK_MS, else the platform's. */
export function limitsFromEnv(): FunctionLimits {
  const positive = (name: string, fallback: number) => {
    const raw = Deno.env.get(name);
    if (raw === undefined || raw === "") return fallback;
    const value = Number(raw);
    if (!Number.isFinite(value) || value <= 0) {
      throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
    }
    return value;
  };
  return {
    memoryLimitMb: positive("FUNCTION_MEMORY_LIMIT_MB", PLATFORM_LIMITS.memoryLimitMb),
    wallClockMs: positive("FUNCTION_WALL_CLOCK_MS", PLATFORM_LIMITS.wallClockMs),
  };
}

export interface FunctionHostOptions {
  functionsDir: string;
  /** `supabase/config.toml`; paths in it are relative to its directory. */
  configToml: string;
  /** The platform's variables every function gets; process plumbing is added here. */
  env: Record<string, string>;
  logDir: string;
  verifier: JwtVerifier;
  /** Builds a gateway error response (JSON body, CORS headers). */
  errorResponse: (
    request: Request,
    status: number,
    code: string,
    message: string,
    details?: unknown,
  ) => Response;
  /** Defaults to limitsFromEnv(). */
  limits?: FunctionLimits;
}

interface Instance {
  child: Deno.ChildProcess;
  port: number;
  exited: Promise<Deno.CommandStatus>;
  /** Set when the process went over a resource limit, so its failures answer WORKER_LIMIT. */
  overLimit: () => boolean;
}

/**
 * Errors the platform itself answers, in its shape. BOOT_ERROR, WORKER_ERROR
 * and WORKER_LIMIT: SB_SPECIFIC_ERROR_CODE/TEXT/REASON in the Supabase CLI's
 * internal/functions/serve/templates/main.ts (WorkerLimit is what a request
 * gets when the supervisor cancels it, `WorkerRequestCancelled`). The idle
 * timeout: supabase/edge-runtime examples/main/index.ts answers
 * `WorkerRequestIdleTimeout` with 504 and `{ msg: e.toString() }`, the message
 * being ext/workers/errors.rs `RequestIdleTimeout` ("request timed out").
 */
const PLATFORM_ERRORS = {
  bootError: [503, { code: "BOOT_ERROR", message: "Worker failed to boot (please check logs)" }],
  workerError: [500, {
    code: "WORKER_ERROR",
    message: "Function exited due to an error (please check logs)",
  }],
  workerLimit: [546, {
    code: "WORKER_LIMIT",
    message: "Worker failed to respond due to a resource limit (please check logs)",
  }],
  idleTimeout: [504, { msg: "WorkerRequestIdleTimeout: request timed out" }],
} as const;

function platformError(request: Request, kind: keyof typeof PLATFORM_ERRORS): Response {
  const [status, body] = PLATFORM_ERRORS[kind];
  return Response.json(body, { status, headers: corsHeaders(request) });
}

/**
 * `verify_jwt` refusals as the platform words them: getAuthErrorResponse and
 * verifyRequest in the main service the Supabase CLI (2.117.0) runs in its
 * edge-runtime container: `{ code, message, msg }` and an `sb-error-code` header.
 */
function jwtRefusal(request: Request, rejected: CredentialRejected): Response {
  const [code, message] = ((): [string, string] => {
    if (rejected.problem === "missing") {
      return ["UNAUTHORIZED_NO_AUTH_HEADER", "Missing authorization header"];
    }
    const token = /^Bearer (\S+)$/.exec(request.headers.get("authorization") ?? "")?.[1];
    let alg: string | undefined;
    try {
      alg = token && !token.startsWith("sb_") ? decodeProtectedHeader(token).alg : undefined;
    } catch { /* not a JWT */ }
    if (alg === undefined) return ["UNAUTHORIZED_INVALID_JWT_FORMAT", "Invalid JWT format"];
    if (alg === "HS256") return ["UNAUTHORIZED_LEGACY_JWT", "Invalid JWT"];
    if (alg === "ES256" || alg === "RS256") return ["UNAUTHORIZED_ASYMMETRIC_JWT", "Invalid JWT"];
    return ["UNAUTHORIZED_UNSUPPORTED_TOKEN_ALGORITHM", `Unsupported JWT algorithm ${alg}`];
  })();
  const headers = new Headers(corsHeaders(request));
  headers.set("sb-error-code", code);
  headers.set(
    "access-control-expose-headers",
    `${headers.get("access-control-expose-headers")}, sb-error-code`,
  );
  return Response.json({ code, message, msg: message }, { status: 401, headers });
}

class BootError extends Error {}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function resolvePath(base: string, path: string): string {
  return path.startsWith("/") ? path : new URL(path, `file://${base}/`).pathname;
}

/** The functions of a project: its functions directory and config.toml. */
export class FunctionCatalog {
  private tomlCache: { mtime: number; functions: Record<string, Record<string, unknown>> } | null =
    null;

  constructor(readonly functionsDir: string, readonly configToml: string) {}

  private async functionsToml(): Promise<Record<string, Record<string, unknown>>> {
    let mtime = -1;
    try {
      mtime = (await Deno.stat(this.configToml)).mtime?.getTime() ?? 0;
    } catch {
      return {};
    }
    if (this.tomlCache?.mtime !== mtime) {
      const toml = parseToml(await Deno.readTextFile(this.configToml));
      const functions = (toml.functions ?? {}) as Record<string, Record<string, unknown>>;
      this.tomlCache = { mtime, functions };
    }
    return this.tomlCache.functions;
  }

  /** The function called `name`, or null when there is none. */
  async resolve(name: string): Promise<FunctionConfig | null> {
    if (!NAME.test(name) || name === "_shared") return null;
    const dir = `${this.functionsDir}/${name}`;
    const settings = (await this.functionsToml())[name] ?? {};
    if (settings.enabled === false) return null;
    const base = this.configToml.replace(/\/[^/]*$/, "");
    const entrypoint = typeof settings.entrypoint === "string"
      ? resolvePath(base, settings.entrypoint)
      : `${dir}/index.ts`;
    if (!(await exists(entrypoint))) return null;
    let denoConfig: string | null = null;
    for (const candidate of [`${dir}/deno.json`, `${dir}/deno.jsonc`]) {
      if (await exists(candidate)) {
        denoConfig = candidate;
        break;
      }
    }
    return {
      name,
      dir,
      entrypoint,
      verifyJwt: settings.verify_jwt !== false,
      denoConfig,
      importMap: typeof settings.import_map === "string"
        ? resolvePath(base, settings.import_map)
        : null,
    };
  }

  /** Every function of the functions directory. */
  async list(): Promise<FunctionConfig[]> {
    const functions: FunctionConfig[] = [];
    try {
      for await (const entry of Deno.readDir(this.functionsDir)) {
        const config = entry.isDirectory ? await this.resolve(entry.name) : null;
        if (config) functions.push(config);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    return functions.sort((a, b) => a.name.localeCompare(b.name));
  }
}

/**
 * How a function's module graph is resolved, the same for `deno cache` at
 * setup and `deno run` at boot: its own deno.json, never the repository's
 * (which the platform does not see either), and its config.toml import map.
 */
function moduleFlags(config: FunctionConfig): string[] {
  const flags = config.denoConfig ? ["--config", config.denoConfig] : ["--no-config"];
  if (config.importMap) flags.push("--import-map", config.importMap);
  return flags;
}

/**
 * What a function's module graph is pinned by: the `lock` of its own deno.json,
 * which must name a lockfile and freeze it (`"lock": { "path": "./deno.lock",
 * "frozen": true }`). Frozen, Deno refuses to resolve anything the lockfile does
 * not already hold, so a new upstream release (a peer range, a dynamic import)
 * can never change what runs: it fails as "The lockfile is out of date" instead.
 * Throws, naming the function and the fix, when the lock is missing or not frozen.
 */
export async function functionLock(
  config: FunctionConfig,
  { mustExist = true } = {},
): Promise<string> {
  const fix = `set "lock": { "path": "./deno.lock", "frozen": true } in its deno.json and ` +
    "run `make lock`";
  if (!config.denoConfig) throw new Error(`function ${config.name} has no deno.json: ${fix}`);
  const { lock } = JSON.parse(await Deno.readTextFile(config.denoConfig)) as {
    lock?: boolean | string | { path?: string; frozen?: boolean };
  };
  if (typeof lock !== "object" || !lock.path || lock.frozen !== true) {
    throw new Error(
      `function ${config.name} does not pin its graph with a frozen lockfile: ${fix}`,
    );
  }
  const path = resolvePath(config.dir, lock.path);
  if (mustExist && !(await exists(path))) {
    throw new Error(`function ${config.name}: ${path} is missing; run \`make lock\``);
  }
  return path;
}

/** Runs the edge runtime's Deno on a function's graph: the runner and its entrypoint. */
async function denoOnGraph(config: FunctionConfig, extra: string[]): Promise<void> {
  const { code } = await new Deno.Command(EDGE_RUNTIME_DENO, {
    args: ["cache", "--quiet", ...extra, ...moduleFlags(config), RUNNER, config.entrypoint],
    cwd: config.dir,
    env: processPlumbing(),
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) throw new Error(`deno cache of function ${config.name} failed (exit ${code})`);
}

/**
 * Downloads every function's whole module graph into the module cache with the
 * edge runtime's Deno, exactly as its frozen lockfile pins it, so function
 * processes (which run `--cached-only` on the same lock) never download and
 * run what was cached. The graph is the runner's with the entrypoint, the same
 * modules a function process loads. A stale or edited lockfile fails here.
 */
export async function cacheFunctions(catalog: FunctionCatalog): Promise<string[]> {
  const functions = await catalog.list();
  for (const config of functions) {
    await functionLock(config);
    await denoOnGraph(config, []);
  }
  return functions.map((config) => config.name);
}

/**
 * Brings every function's lockfile in line with its deno.json (`make lock`):
 * what changed there is resolved and written; every other pin stays as it was.
 */
export async function lockFunctions(catalog: FunctionCatalog): Promise<string[]> {
  const functions = await catalog.list();
  for (const config of functions) {
    await functionLock(config, { mustExist: false });
    await denoOnGraph(config, ["--frozen=false"]);
  }
  return functions.map((config) => config.name);
}

export class FunctionHost {
  private readonly instances = new Map<string, Promise<Instance>>();
  private readonly retired = new Set<Promise<Instance>>();
  private readonly catalog: FunctionCatalog;
  private readonly limits: FunctionLimits;
  private readonly env: Record<string, string>;
  private watcher: Deno.FsWatcher | null = null;

  constructor(private readonly options: FunctionHostOptions) {
    this.catalog = new FunctionCatalog(options.functionsDir, options.configToml);
    this.limits = options.limits ?? limitsFromEnv();
    this.env = { ...processPlumbing(), ...options.env };
  }

  /** The function called `name`, or null when there is none. */
  resolve(name: string): Promise<FunctionConfig | null> {
    return this.catalog.resolve(name);
  }

  /** Names of every function in the functions directory. */
  async list(): Promise<string[]> {
    return (await this.catalog.list()).map((config) => config.name);
  }

  /**
   * Watches the functions directory and config.toml; a change retires the
   * processes it affects. Old processes finish their requests for a grace period.
   */
  watch(): void {
    const paths = [this.options.functionsDir];
    try {
      Deno.statSync(this.options.configToml);
      paths.push(this.options.configToml);
    } catch { /* no config.toml: defaults apply */ }
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(paths, { recursive: true });
    } catch {
      return; // nothing to watch yet
    }
    this.watcher = watcher;
    let pending: Set<string> | null = null;
    (async () => {
      for await (const event of watcher) {
        if (event.kind === "access") continue;
        const names = new Set(event.paths.map((path) => {
          if (!path.startsWith(`${this.options.functionsDir}/`)) return "*";
          const name = path.slice(this.options.functionsDir.length + 1).split("/")[0];
          return name.startsWith("_") ? "*" : name;
        }));
        if (pending) {
          for (const name of names) pending.add(name);
          continue;
        }
        pending = names;
        setTimeout(() => {
          const changed = pending!;
          pending = null;
          for (const name of [...this.instances.keys()]) {
            if (changed.has("*") || changed.has(name)) this.retire(name);
          }
        }, 100);
      }
    })().catch(() => {});
  }

  private retire(name: string): void {
    const pending = this.instances.get(name);
    this.instances.delete(name);
    if (!pending) return;
    this.retired.add(pending);
    pending.then((instance) => {
      const timer = setTimeout(() => this.kill(instance), 10_000);
      instance.exited.then(() => {
        clearTimeout(timer);
        this.retired.delete(pending);
      });
    }, () => this.retired.delete(pending));
  }

  private async kill(instance: Instance): Promise<void> {
    try {
      instance.child.kill("SIGTERM");
    } catch { /* already gone */ }
    const done = await Promise.race([
      instance.exited.then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 2_000)),
    ]);
    if (!done) {
      try {
        instance.child.kill("SIGKILL");
      } catch { /* already gone */ }
      await instance.exited;
    }
  }

  /** Starts every function ahead of its first request; boot failures are logged, not thrown. */
  async prewarm(): Promise<void> {
    await Promise.all(
      (await this.catalog.list()).map((config) => this.instance(config).catch(() => {})),
    );
  }

  private instance(config: FunctionConfig): Promise<Instance> {
    let instance = this.instances.get(config.name);
    if (!instance) {
      instance = this.spawn(config);
      this.instances.set(config.name, instance);
      instance.catch(() => {
        if (this.instances.get(config.name) === instance) this.instances.delete(config.name);
      });
    }
    return instance;
  }

  private async spawn(config: FunctionConfig): Promise<Instance> {
    const { memoryLimitMb } = this.limits;
    const args = ["run", "--quiet", "--no-prompt", "--cached-only"];
    // The heap cap makes V8 itself fail an allocation past the limit; the RSS
    // watchdog below catches what lives outside the heap (ArrayBuffers).
    args.push(`--v8-flags=--max-old-space-size=${memoryLimitMb}`);
    args.push("--allow-net", "--allow-env", "--allow-read", "--allow-sys");
    args.push(`--allow-write=${this.env.TMPDIR ?? "/tmp"}`);
    args.push(...moduleFlags(config), RUNNER, new URL(`file://${config.entrypoint}`).href);

    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(EDGE_RUNTIME_DENO, {
        args,
        cwd: config.dir,
        clearEnv: true,
        env: this.env,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      throw new BootError(`${EDGE_RUNTIME_DENO} is missing: run local/setup.sh`);
    }

    await Deno.mkdir(this.options.logDir, { recursive: true });
    const log = await Deno.open(`${this.options.logDir}/${config.name}.log`, {
      create: true,
      append: true,
    });
    const encoder = new TextEncoder();
    const tail: string[] = [];
    let overLimit = false;
    const writeLine = (line: string) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      // V8's own report when the heap cap is hit ("Fatal JavaScript out of memory: Reached heap limit").
      if (/out of memory/i.test(line)) overLimit = true;
      log.writeSync(encoder.encode(`${new Date().toISOString()} [${child.pid}] ${line}\n`));
    };
    writeLine(`starting ${config.entrypoint}`);

    let reportPort: (port: number) => void = () => {};
    const listening = new Promise<number>((resolve) => (reportPort = resolve));
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      let buffer = "";
      const decoder = new TextDecoder();
      for await (const bytes of stream) {
        buffer += decoder.decode(bytes, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.startsWith(LISTENING_MARKER)) reportPort(Number(line.split(" ")[1]));
          else writeLine(line);
        }
      }
      if (buffer) writeLine(buffer);
    };
    const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);

    const watchdog = this.watchMemory(child, memoryLimitMb, (rssMb) => {
      overLimit = true;
      writeLine(`memory limit: ${rssMb} MB resident, over the ${memoryLimitMb} MB cap; killing`);
    });
    const exited = child.status.then(async (status) => {
      clearInterval(watchdog);
      await pumped.catch(() => {});
      writeLine(`exited with code ${status.code}${status.signal ? ` (${status.signal})` : ""}`);
      log.close();
      return status;
    });
    exited.then(() => {
      // A dead process is forgotten, so the next request starts a fresh one.
      const current = this.instances.get(config.name);
      current?.then((instance) => {
        if (instance.child === child) this.instances.delete(config.name);
      }, () => {});
    });

    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BootError("timed out")), BOOT_TIMEOUT_MS);
    });
    try {
      const port = await Promise.race([
        listening,
        exited.then((status) => {
          throw new BootError(`exited with code ${status.code}: ${tail.slice(-5).join(" | ")}`);
        }),
        timeout,
      ]);
      return { child, port, exited, overLimit: () => overLimit };
    } catch (error) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Kills the process once it holds more than `limitMb` beyond what it held at
   * its first reading: the platform counts the isolate's heap and external
   * memory (supabase/edge-runtime crates/base/src/worker/supervisor/mod.rs,
   * IsolateMemoryStats), not the runtime's own code, which the first reading
   * stands in for.
   */
  private watchMemory(
    child: Deno.ChildProcess,
    limitMb: number,
    onOver: (rssMb: number) => void,
  ): ReturnType<typeof setInterval> {
    let baselineKb: number | null = null;
    const timer = setInterval(() => {
      let status: string;
      try {
        status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
      } catch {
        return; // gone, or no /proc here: the heap cap still applies
      }
      const rssKb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
      if (!Number.isFinite(rssKb)) return;
      baselineKb ??= rssKb;
      if (rssKb - baselineKb > limitMb * 1024) {
        clearInterval(timer);
        onOver(Math.round(rssKb / 1024));
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      }
    }, 100);
    return timer;
  }

  /** Serves `/functions/v1/<name><rest>`. */
  async handle(request: Request, name: string, rest: string): Promise<Response> {
    const { errorResponse, verifier } = this.options;
    const config = await this.resolve(name);
    if (!config) {
      return errorResponse(request, 404, "not_found", `Function ${name} was not found`, {
        hint: `Create ${this.options.functionsDir}/${name}/index.ts`,
      });
    }
    // Browsers send preflights without credentials; the function answers them itself.
    if (config.verifyJwt && request.method !== "OPTIONS") {
      try {
        await requireJwt(request, verifier);
      } catch (error) {
        const rejected = error as CredentialRejected;
        if (!("problem" in rejected)) throw error;
        return jwtRefusal(request, rejected);
      }
    }

    let instance: Instance;
    try {
      instance = await this.instance(config);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      console.error(`function ${name} failed to boot: ${reason}`);
      return platformError(request, "bootError");
    }
    return await this.proxy(request, instance, `/${name}${rest}`);
  }

  private async proxy(request: Request, instance: Instance, path: string): Promise<Response> {
    const target = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.delete("host");
    // The gateway compresses for the client; the hop to the function stays
    // plain (without the header, fetch asks for gzip and Deno 2.1.4's
    // Deno.serve obliges).
    headers.set("accept-encoding", "identity");
    // The wall clock runs until the function answers; a response that has
    // started may stream for as long as the client listens.
    const wallClock = new AbortController();
    const timer = setTimeout(() => wallClock.abort(), this.limits.wallClockMs);
    try {
      const upstream = await fetch(`http://127.0.0.1:${instance.port}${path}${target.search}`, {
        method: request.method,
        headers,
        body: request.body,
        redirect: "manual",
        signal: AbortSignal.any([request.signal, wallClock.signal]),
      });
      return new Response(upstream.body, {
        status: upstream.status,
        statusText: upstream.statusText,
        headers: upstream.headers,
      });
    } catch (error) {
      if (request.signal.aborted) return new Response(null, { status: 499 });
      if (wallClock.signal.aborted) return platformError(request, "idleTimeout");
      console.error(`function hop ${path} failed: ${error}`);
      // Wait briefly for the exit (and its last words), so the next request gets a fresh process.
      await Promise.race([
        instance.exited,
        new Promise((resolve) => setTimeout(resolve, 1_000)),
      ]);
      return platformError(request, instance.overLimit() ? "workerLimit" : "workerError");
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops every function process, retired ones included. */
  async shutdown(): Promise<void> {
    this.watcher?.close();
    const all = [...this.instances.values(), ...this.retired];
    this.instances.clear();
    await Promise.all(all.map(async (pending) => {
      const instance = await pending.catch(() => null);
      if (instance) await this.kill(instance);
    }));
  }
}

if (import.meta.main) {
  // `deno run -A local/gateway/functions.ts cache|lock [functions dir] [config.toml]`:
  // cache is run by local/setup.sh, lock by `make lock`.
  const [command, functionsDir, configToml] = Deno.args;
  const commands = { cache: cacheFunctions, lock: lockFunctions };
  if (command !== "cache" && command !== "lock") {
    console.error("usage: functions.ts cache|lock [functions dir] [config.toml]");
    Deno.exit(2);
  }
  const repo = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
  const dir = functionsDir ? resolvePath(Deno.cwd(), functionsDir) : `${repo}/supabase/functions`;
  const catalog = new FunctionCatalog(
    dir,
    configToml
      ? resolvePath(Deno.cwd(), configToml)
      : `${dir.replace(/\/[^/]*\/?$/, "")}/config.toml`,
  );
  try {
    const names = await commands[command](catalog);
    const done = command === "cache" ? "cached the locked graphs of" : "updated the lockfiles of";
    console.error(`${done} ${names.join(", ") || "no functions"}`);
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    Deno.exit(1);
  }
}
