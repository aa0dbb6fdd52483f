/**
 * Memory under sustained load: N requests at concurrency C to get-device-qr
 * (JSON, a valid user token) and, in a fresh gateway each, to the floor
 * function, sampling the function process's resident memory from
 * /proc/<pid>/status all along.
 *
 * The hosted edge runtime stops a function that goes over its memory limit
 * (256 MB by default) and starts a new one; an unbounded cache or a leak shows
 * up there as restarts and cold starts under load. So the scenario records, per
 * function: cold start (first request to a new process, which the gateway
 * starts on that request), the steady resident set (median of the last
 * samples), the peak (the kernel's VmHWM), and restarts, counted twice: the
 * function's pid under the gateway at every sample, and the gateway's function
 * log (`<state dir>/gateway/functions/<name>.log`), which has a line for each
 * exit, with the pid.
 */
import { mintAccessToken } from "../local/gateway/jwt.ts";
import { JWT_SECRET, loadSigningKeys } from "../local/gateway/keys.ts";
import { gatewayStateDir, startBenchGateway } from "./lib/gateway.ts";
import { benchDatabaseName, connect, createBenchDatabase, dropBenchDatabase } from "./lib/pg.ts";
import { quantile, summarize, type Summary } from "./lib/stats.ts";
import { once, seed, type Target, targets } from "./request_cost.ts";

/**
 * The hosted limit ("Maximum Memory: 256MB" in Supabase's Edge Functions
 * limits). edge-runtime configures it in MiB and checks the isolate's heap in
 * use plus external memory against it (supabase/edge-runtime,
 * crates/base/src/runtime/mod.rs: `MemCheck`, `mib_to_bytes`); the resident
 * set compared with it here also holds the runtime itself, so it is stricter.
 */
export const HOSTED_CAP_MIB = 256;

export interface MemoryOptions {
  requests: number;
  concurrency: number;
  /** How often the function's resident set is read. */
  sampleMs: number;
  /** The steady figure is the median of this many last samples (at most half of them). */
  steadySamples: number;
  /** Fresh processes timed per function, the loaded one included. */
  coldStarts: number;
  /** Both by default; one alone to re-measure it. */
  functions?: MemoryRun["fn"][];
  log: (line: string) => void;
}

export interface MemorySample {
  /** Requests answered when the sample was taken. */
  done: number;
  rssMiB: number;
}

export interface MemoryRun {
  fn: "get-device-qr" | "floor";
  requests: number;
  errors: number;
  seconds: number;
  perSecond: number;
  /** First request to a fresh gateway: process start, module loading and that request. */
  coldStartMs: Summary;
  pid: number;
  /** Distinct function pids seen while sampling, besides the first one. */
  pidChanges: number;
  /** Lines of the function log, written during the run, saying that this process exited. */
  exits: string[];
  rssAfterFirstMiB: number;
  steadyRssMiB: number;
  peakRssMiB: number;
  /** About 60 evenly spaced samples, for the chart. */
  timeline: MemorySample[];
}

export interface MemoryReport {
  requests: number;
  concurrency: number;
  capMiB: number;
  runs: MemoryRun[];
}

async function procStatus(pid: number): Promise<{ rssMiB: number; hwmMiB: number }> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { rssMiB: kb("VmRSS") / 1024, hwmMiB: kb("VmHWM") / 1024 };
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch {
    return 0;
  }
}

async function readFrom(path: string, offset: number): Promise<string> {
  try {
    const bytes = await Deno.readFile(path);
    return new TextDecoder().decode(bytes.subarray(offset));
  } catch {
    return "";
  }
}

function thin<T>(items: T[], count: number): T[] {
  if (items.length <= count) return items;
  const step = (items.length - 1) / (count - 1);
  return Array.from({ length: count }, (_, i) => items[Math.round(i * step)]);
}

type Tokens = { deviceId: string; token: string }[];

/** Times the first request to `fn` in a fresh gateway, which starts the function process for it. */
async function firstRequest(all: Target[], fn: string): Promise<number> {
  const t0 = performance.now();
  if (!(await once(all[0]))) throw new Error(`${fn} answered its first request unexpectedly`);
  return performance.now() - t0;
}

async function coldStart(dbUrl: string, fn: MemoryRun["fn"], tokens: Tokens): Promise<number> {
  const gateway = await startBenchGateway(dbUrl);
  try {
    return await firstRequest(targets(gateway, fn === "floor" ? "floor" : "json", tokens), fn);
  } finally {
    await gateway.stop();
  }
}

async function runOne(
  dbUrl: string,
  fn: MemoryRun["fn"],
  tokens: Tokens,
  functionLog: string,
  options: MemoryOptions,
): Promise<MemoryRun> {
  const colds: number[] = [];
  for (let i = 1; i < options.coldStarts; i++) colds.push(await coldStart(dbUrl, fn, tokens));
  const gateway = await startBenchGateway(dbUrl);
  const logOffset = await fileSize(functionLog);
  try {
    const all: Target[] = targets(gateway, fn === "floor" ? "floor" : "json", tokens);
    colds.push(await firstRequest(all, fn));
    const coldStartMs = summarize(colds);
    const pid = (await gateway.functionPids())[fn];
    if (!pid) throw new Error(`no ${fn} process under gateway ${gateway.pid}`);
    const rssAfterFirstMiB = (await procStatus(pid)).rssMiB;

    options.log(`memory ${fn}: ${options.requests} requests at concurrency ${options.concurrency}`);
    let done = 0;
    let sent = 0;
    let errors = 0;
    const samples: MemorySample[] = [];
    const pids = new Set<number>();
    let peakRssMiB = 0;
    let sampling = Promise.resolve();
    const sample = async () => {
      const now = await gateway.functionPids();
      if (now[fn]) pids.add(now[fn]);
      try {
        const { rssMiB, hwmMiB } = await procStatus(pid);
        samples.push({ done, rssMiB });
        peakRssMiB = Math.max(peakRssMiB, hwmMiB);
      } catch { /* the process is gone; pids and the log tell */ }
    };
    const timer = setInterval(() => {
      sampling = sampling.then(sample);
    }, options.sampleMs);
    const started = performance.now();
    await Promise.all(Array.from({ length: options.concurrency }, async (_, client) => {
      const target = all[client % all.length];
      while (sent < options.requests) {
        sent++;
        if (!(await once(target).catch(() => false))) errors++;
        done++;
      }
    }));
    const seconds = (performance.now() - started) / 1000;
    clearInterval(timer);
    await sampling;
    await sample();
    pids.delete(pid);

    // The log is shared by every gateway on this state directory (another
    // benchmark may run beside this one): only this process's lines count.
    const exits = (await readFrom(functionLog, logOffset)).split("\n")
      .filter((l) => l.includes(`[${pid}] exited with code `));
    const tail = samples.slice(-Math.min(options.steadySamples, Math.ceil(samples.length / 2)))
      .map((s) => s.rssMiB).sort((a, b) => a - b);
    const run: MemoryRun = {
      fn,
      requests: options.requests,
      errors,
      seconds,
      perSecond: options.requests / seconds,
      coldStartMs,
      pid,
      pidChanges: pids.size,
      exits,
      rssAfterFirstMiB,
      steadyRssMiB: quantile(tail, 0.5),
      peakRssMiB,
      timeline: thin(samples, 60),
    };
    options.log(
      `memory ${fn}: steady ${run.steadyRssMiB.toFixed(1)} MiB, peak ${
        run.peakRssMiB.toFixed(1)
      } MiB, cold start ${coldStartMs.median.toFixed(0)} ms, ${
        run.perSecond.toFixed(0)
      } req/s, ${errors} errors, ${run.pidChanges + exits.length} restarts`,
    );
    return run;
  } finally {
    await gateway.stop();
  }
}

export async function runMemory(options: MemoryOptions): Promise<MemoryReport> {
  const dbName = benchDatabaseName("bench_memory");
  const dbUrl = await createBenchDatabase(dbName);
  const sql = connect(dbUrl, 2);
  try {
    const users = await seed(sql);
    const { privateJwk } = await loadSigningKeys();
    const stateDir = await gatewayStateDir();
    // The token names the gateway that issued it only in `iss`, which the
    // functions do not check, so one set of tokens serves every fresh gateway.
    const issuer = "http://127.0.0.1/bench-memory";
    const tokens = await Promise.all(users.map(async ({ userId, deviceId }) => ({
      deviceId,
      token: await mintAccessToken(userId, { url: issuer, jwtSecret: JWT_SECRET, privateJwk }, {
        expiresIn: 3 * 3600,
      }),
    })));
    const runs: MemoryRun[] = [];
    for (const fn of options.functions ?? ["get-device-qr", "floor"] as const) {
      runs.push(
        await runOne(dbUrl, fn, tokens, `${stateDir}/gateway/functions/${fn}.log`, options),
      );
    }
    return {
      requests: options.requests,
      concurrency: options.concurrency,
      capMiB: HOSTED_CAP_MIB,
      runs,
    };
  } finally {
    await sql.end();
    await dropBenchDatabase(dbName);
  }
}

/** Why the memory scenario failed, if it did: over the cap, a restart, or failed requests. */
export function memoryProblems(report: MemoryReport): string[] {
  const problems: string[] = [];
  for (const run of report.runs) {
    if (run.errors > 0) problems.push(`memory ${run.fn}: ${run.errors} failed requests`);
    if (run.pidChanges > 0 || run.exits.length > 0) {
      problems.push(
        `memory ${run.fn}: the function restarted (${run.exits.length} exits logged, ${run.pidChanges} other pids)`,
      );
    }
    if (run.fn === "get-device-qr" && run.peakRssMiB > report.capMiB) {
      problems.push(
        `memory ${run.fn}: peak resident ${
          run.peakRssMiB.toFixed(1)
        } MiB over the ${report.capMiB} MiB cap`,
      );
    }
  }
  return problems;
}

if (import.meta.main) {
  const count = Number(Deno.args.find((a) => a.startsWith("--requests="))?.slice(11) ?? 10_000);
  const fn = Deno.args.find((a) => a.startsWith("--fn="))?.slice(5) as MemoryRun["fn"] | undefined;
  const report = await runMemory({
    requests: count,
    concurrency: 16,
    sampleMs: 250,
    steadySamples: 40,
    coldStarts: 1,
    functions: fn ? [fn] : undefined,
    log: (line) => console.error(line),
  });
  console.log(JSON.stringify(report, null, 2));
  const problems = memoryProblems(report);
  if (problems.length > 0) {
    console.error(problems.join("\n"));
    Deno.exit(1);
  }
}
