/**
 * `/functions/v1/<name>`: each function of the functions directory runs in its
 * own Deno process with only the environment the platform gives a function,
 * configured by `supabase/config.toml` (`[functions.<name>]` `enabled`,
 * `verify_jwt`, `entrypoint`, `import_map`) and its own `deno.json`.
 *
 * A process is started on first request (or ahead, by `prewarm`) and reused.
 * Editing a function's files (or `_shared/`, or config.toml) retires its
 * process, so the next request runs the new code, like `supabase functions serve`.
 * A process that dies fails its in-flight requests with a 500 and is started
 * again on the next request; the gateway itself keeps serving.
 */
import { parse as parseToml } from "smol-toml";
import { type CredentialRejected, requireJwt } from "./credentials.ts";
import type { JwtVerifier } from "./jwt.ts";
import { LISTENING_MARKER } from "./function_runner.ts";

const RUNNER = new URL("./function_runner.ts", import.meta.url).pathname;
const BOOT_TIMEOUT_MS = 60_000;
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;

export interface FunctionConfig {
  name: string;
  dir: string;
  entrypoint: string;
  verifyJwt: boolean;
  /** `--config` for the process: the function's own deno.json, when it has one. */
  denoConfig: string | null;
  importMap: string | null;
}

export interface FunctionHostOptions {
  functionsDir: string;
  /** `supabase/config.toml`; paths in it are relative to its directory. */
  configToml: string;
  /** What every function gets in its environment. */
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
}

interface Instance {
  child: Deno.ChildProcess;
  port: number;
  exited: Promise<Deno.CommandStatus>;
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

export class FunctionHost {
  private readonly instances = new Map<string, Promise<Instance>>();
  private readonly retired = new Set<Promise<Instance>>();
  private watcher: Deno.FsWatcher | null = null;
  private tomlCache: { mtime: number; functions: Record<string, Record<string, unknown>> } | null =
    null;

  constructor(private readonly options: FunctionHostOptions) {}

  private async functionsToml(): Promise<Record<string, Record<string, unknown>>> {
    let mtime = -1;
    try {
      mtime = (await Deno.stat(this.options.configToml)).mtime?.getTime() ?? 0;
    } catch {
      return {};
    }
    if (this.tomlCache?.mtime !== mtime) {
      const toml = parseToml(await Deno.readTextFile(this.options.configToml));
      const functions = (toml.functions ?? {}) as Record<string, Record<string, unknown>>;
      this.tomlCache = { mtime, functions };
    }
    return this.tomlCache.functions;
  }

  /** The function called `name`, or null when there is none. */
  async resolve(name: string): Promise<FunctionConfig | null> {
    if (!NAME.test(name) || name === "_shared") return null;
    const dir = `${this.options.functionsDir}/${name}`;
    const settings = (await this.functionsToml())[name] ?? {};
    if (settings.enabled === false) return null;
    const base = this.options.configToml.replace(/\/[^/]*$/, "");
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

  /** Names of every function in the functions directory. */
  async list(): Promise<string[]> {
    const names: string[] = [];
    try {
      for await (const entry of Deno.readDir(this.options.functionsDir)) {
        if (entry.isDirectory && (await this.resolve(entry.name))) names.push(entry.name);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    return names.sort();
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
    await Promise.all((await this.list()).map(async (name) => {
      const config = await this.resolve(name);
      if (config) await this.instance(config).catch(() => {});
    }));
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
    const args = ["run", "--quiet", "--no-prompt", "--allow-net", "--allow-env", "--allow-read"];
    args.push("--allow-sys", `--allow-write=${Deno.env.get("TMPDIR") ?? "/tmp"}`);
    if (config.denoConfig) args.push("--config", config.denoConfig);
    if (config.importMap) args.push("--import-map", config.importMap);
    args.push(RUNNER, new URL(`file://${config.entrypoint}`).href);

    const child = new Deno.Command(Deno.execPath(), {
      args,
      cwd: config.dir,
      clearEnv: true,
      env: this.options.env,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();

    await Deno.mkdir(this.options.logDir, { recursive: true });
    const log = await Deno.open(`${this.options.logDir}/${config.name}.log`, {
      create: true,
      append: true,
    });
    const encoder = new TextEncoder();
    const tail: string[] = [];
    const writeLine = (line: string) => {
      tail.push(line);
      if (tail.length > 20) tail.shift();
      log.writeSync(encoder.encode(`${new Date().toISOString()} [${child.pid}] ${line}\n`));
    };
    writeLine(`starting ${config.entrypoint}`);

    let reportPort: (port: number) => void = () => {};
    const listening = new Promise<number>((resolve) => (reportPort = resolve));
    const pump = async (stream: ReadableStream<Uint8Array>) => {
      let buffer = "";
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buffer += chunk;
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

    const exited = child.status.then(async (status) => {
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
      return { child, port, exited };
    } catch (error) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      throw error;
    } finally {
      clearTimeout(timer);
    }
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
        return errorResponse(request, 401, "unauthorized", rejected.message, {
          reason: rejected.problem,
          hint: rejected.hint,
        });
      }
    }

    let instance: Instance;
    try {
      instance = await this.instance(config);
    } catch (error) {
      return errorResponse(request, 503, "boot_error", `Function ${name} failed to start`, {
        reason: error instanceof Error ? error.message : String(error),
        hint: `See ${this.options.logDir}/${name}.log`,
      });
    }
    return await this.proxy(request, config, instance, `/${name}${rest}`);
  }

  private async proxy(
    request: Request,
    config: FunctionConfig,
    instance: Instance,
    path: string,
  ): Promise<Response> {
    const target = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.delete("host");
    // The gateway compresses for the client; the hop to the function stays plain.
    headers.delete("accept-encoding");
    try {
      const upstream = await fetch(`http://127.0.0.1:${instance.port}${path}${target.search}`, {
        method: request.method,
        headers,
        body: request.body,
        redirect: "manual",
        signal: request.signal,
      });
      return new Response(upstream.body, {
        status: upstream.status,
        statusText: upstream.statusText,
        headers: upstream.headers,
      });
    } catch (error) {
      if (request.signal.aborted) return new Response(null, { status: 499 });
      // Wait briefly for the exit, so the next request gets a fresh process.
      const died = await Promise.race([
        instance.exited.then(() => true),
        new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 1_000)),
      ]);
      return this.options.errorResponse(
        request,
        500,
        died ? "function_crashed" : "function_unreachable",
        died
          ? `Function ${config.name} crashed while handling the request; it restarts on the next request`
          : `Function ${config.name} did not answer`,
        { reason: error instanceof Error ? error.message : String(error) },
      );
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
