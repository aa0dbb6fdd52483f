/**
 * One peer queue's run, in a graph of its own (bench/peers/deno.json and its
 * frozen deno.lock), so the root graph never resolves these packages. Run by
 * bench/peers.ts, which owns the databases:
 *
 *   deno run -A --config bench/peers/deno.json bench/peers/main.ts '<json>'
 *
 * <json>: {"peer", "url", "waiting", "take", "reps", "claimers", "batch"}; prints
 * {"runs": [{fetched, duplicates, seconds, perSecond}], "enqueueSeconds"}.
 */
import { makeWorkerUtils, run as runGraphileWorker, runMigrations } from "graphile-worker";
import { PgBoss } from "pg-boss";

interface PeerRun {
  fetched: number;
  duplicates: number;
  seconds: number;
  perSecond: number;
}

const input = JSON.parse(Deno.args[0]) as {
  peer: "graphile-worker" | "pg-boss";
  url: string;
  waiting: number;
  take: number;
  reps: number;
  claimers: number;
  batch: number;
};
const CLAIMERS = input.claimers;
const CLAIM_BATCH = input.batch;

async function bossRun(
  url: string,
  waiting: number,
  take: number,
  reps: number,
) {
  const boss = new PgBoss({
    connectionString: url,
    max: CLAIMERS + 2,
    supervise: false,
    schedule: false,
  });
  boss.on("error", () => {});
  await boss.start();
  try {
    const started = performance.now();
    const enqueue = async (queue: string) => {
      await boss.createQueue(queue);
      for (let done = 0; done < waiting; done += 10_000) {
        const batch = Math.min(10_000, waiting - done);
        await boss.insert(
          queue,
          Array.from({ length: batch }, () => ({ data: {} })),
        );
      }
    };
    const runs: PeerRun[] = [];
    let enqueueSeconds = 0;
    for (let rep = 0; rep < reps; rep++) {
      // A queue per run, so every run meets `waiting` jobs, none taken yet.
      const queue = `bench_${rep}`;
      await enqueue(queue);
      if (rep === 0) enqueueSeconds = (performance.now() - started) / 1000;
      const ids: string[] = [];
      const t = performance.now();
      await Promise.all(Array.from({ length: CLAIMERS }, async () => {
        while (ids.length < take) {
          const jobs = await boss.fetch(queue, { batchSize: CLAIM_BATCH });
          if (jobs.length === 0) break;
          for (const job of jobs) ids.push(job.id);
        }
      }));
      const seconds = (performance.now() - t) / 1000;
      runs.push({
        fetched: ids.length,
        duplicates: ids.length - new Set(ids).size,
        seconds,
        perSecond: ids.length / seconds,
      });
      await boss.deleteQueue(queue);
    }
    return { runs, enqueueSeconds };
  } finally {
    await boss.stop({ graceful: false });
  }
}

async function graphileRun(
  url: string,
  waiting: number,
  take: number,
  reps: number,
) {
  await runMigrations(
    { connectionString: url, logger: silentLogger() } as never,
  );
  const utils = await makeWorkerUtils(
    { connectionString: url, logger: silentLogger() } as never,
  );
  try {
    const runs: PeerRun[] = [];
    let enqueueSeconds = 0;
    for (let rep = 0; rep < reps; rep++) {
      await utils.withPgClient(async (client) => {
        await client.query("delete from graphile_worker._private_jobs");
        const started = performance.now();
        for (let done = 0; done < waiting; done += 50_000) {
          await client.query(
            `select graphile_worker.add_jobs(array(
               select row('noop', '{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec
               from generate_series(1, $1)))`,
            [Math.min(50_000, waiting - done)],
          );
        }
        if (rep === 0) enqueueSeconds = (performance.now() - started) / 1000;
      });
      const seen = new Set<string>();
      let duplicates = 0;
      let done = 0;
      let finish!: () => void;
      const finished = new Promise<void>((resolve) => finish = resolve);
      const taskList = {
        noop: (_payload: unknown, helpers: { job: { id: string } }) => {
          firstAt ??= performance.now();
          if (seen.has(helpers.job.id)) duplicates++;
          seen.add(helpers.job.id);
          if (++done === take) finish();
          return Promise.resolve();
        },
      };
      // Timed from the first job a runner starts: the runners' own start-up is not a fetch.
      let firstAt: number | undefined;
      const runners = await Promise.all(
        Array.from({ length: CLAIMERS }, () =>
          runGraphileWorker({
            connectionString: url,
            concurrency: 1,
            noHandleSignals: true,
            pollInterval: 100,
            taskList,
            logger: silentLogger(),
            // Its batching, as its performance guide advises for throughput: fetch 100
            // jobs per query, and complete the jobs that finish together in one.
            preset: { worker: { localQueue: { size: CLAIM_BATCH }, completeJobBatchDelay: 0 } },
          } as never)),
      );
      await finished;
      const seconds = (performance.now() - firstAt!) / 1000;
      await Promise.all(runners.map((runner) => runner.stop()));
      runs.push({
        fetched: done,
        duplicates,
        seconds,
        perSecond: done / seconds,
      });
    }
    return { runs, enqueueSeconds };
  } finally {
    await utils.release();
  }
}

/** graphile-worker logs every runner's start and stop; the benchmark's log is enough. */
function silentLogger() {
  const logger = {
    debug() {},
    info() {},
    warn() {},
    error() {},
    scope: () => logger,
  };
  return logger;
}

const result = input.peer === "pg-boss"
  ? await bossRun(input.url, input.waiting, input.take, input.reps)
  : await graphileRun(input.url, input.waiting, input.take, input.reps);
console.log(JSON.stringify(result));
