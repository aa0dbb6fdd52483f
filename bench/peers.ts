/**
 * The PostgreSQL queues people pick instead of claim_devices, in the same run,
 * on the same cluster: graphile-worker and pg-boss, pinned in
 * bench/peers/deno.json (a graph and frozen lock of their own). Each is
 * installed by its own migrations into a Supabase-shaped database of its own
 * with N jobs waiting (the sizes sql_scale.ts uses); the same 8 concurrent
 * claimers take batches of 100 until CLAIM_POOL jobs are taken.
 *
 * - pg-boss: `boss.fetch(queue, { batchSize: 100 })` in 8 concurrent loops; a
 *   fetch marks jobs active and completes nothing, as a claim does.
 * - graphile-worker has no fetch-only API: 8 runners (concurrency 1 each, a
 *   local queue of 100, which fetches and locks 100 jobs per query) run a task
 *   that does nothing; a job counts when its task ran, so its figure includes
 *   completing jobs, which a claim does not do.
 *
 * Jobs are enqueued with each library's bulk path: graphile_worker.add_jobs
 * (50,000 per call) and boss.insert (10,000 per call).
 *
 *   deno run -A bench/peers.ts [sizes...]    prints the figures as JSON
 */
import { benchDatabaseName, createPlainDatabase, dropBenchDatabase, REPO } from "./lib/pg.ts";
import { summarize, type Summary } from "./lib/stats.ts";
import { CLAIM_BATCH, CLAIM_POOL, CLAIMERS } from "./sql_scale.ts";

export const PEERS = ["graphile-worker", "pg-boss"] as const;
export type Peer = typeof PEERS[number];

export interface PeerRun {
  fetched: number;
  duplicates: number;
  seconds: number;
  perSecond: number;
}

export interface PeerResult {
  peer: Peer;
  version: string;
  waiting: number;
  enqueueSeconds: number;
  runs: PeerRun[];
  perSecond: Summary;
}

export interface PeerOptions {
  sizes: number[];
  reps: number;
  /** Jobs taken per run (CLAIM_POOL, as claims take devices). */
  take?: number;
  log: (line: string) => void;
}

function versionOf(peer: Peer): string {
  const imports = JSON.parse(Deno.readTextFileSync(`${REPO}/bench/peers/deno.json`))
    .imports as Record<string, string>;
  return imports[peer]?.replace(/^npm:.*@/, "") ?? "?";
}

async function runPeer(peer: Peer, url: string, waiting: number, take: number, reps: number) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      "--config",
      `${REPO}/bench/peers/deno.json`,
      `${REPO}/bench/peers/main.ts`,
      JSON.stringify({ peer, url, waiting, take, reps, claimers: CLAIMERS, batch: CLAIM_BATCH }),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`${peer} run failed: ${new TextDecoder().decode(stderr).slice(-2000)}`);
  }
  const lines = new TextDecoder().decode(stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]) as { runs: PeerRun[]; enqueueSeconds: number };
}

export async function runPeers(options: PeerOptions): Promise<PeerResult[]> {
  const results: PeerResult[] = [];
  for (const waiting of options.sizes) {
    const take = Math.min(options.take ?? CLAIM_POOL, waiting);
    for (const peer of PEERS) {
      const name = benchDatabaseName(`bench_${peer === "pg-boss" ? "boss" : "graphile"}`);
      options.log(`peers: ${peer}, ${waiting.toLocaleString("en-US")} jobs waiting`);
      const url = await createPlainDatabase(name);
      try {
        const { runs, enqueueSeconds } = await runPeer(peer, url, waiting, take, options.reps);
        results.push({
          peer,
          version: versionOf(peer),
          waiting,
          enqueueSeconds,
          runs,
          perSecond: summarize(runs.map((r) => r.perSecond)),
        });
      } finally {
        await dropBenchDatabase(name);
      }
    }
  }
  return results;
}

if (import.meta.main) {
  const sizes = Deno.args.length > 0 ? Deno.args.map(Number) : [10_000];
  const results = await runPeers({ sizes, reps: 2, log: (line) => console.error(line) });
  console.log(JSON.stringify(results, null, 2));
}
