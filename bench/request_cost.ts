/**
 * Request cost: get-device-qr (JSON, and PNG from the image cache) through the
 * full local stack (gateway → function process → gateway RPC → PostgreSQL) at
 * concurrency 1, 16 and 64, against the floor: the bench-only `floor`
 * function, which authenticates the same way and makes the cheapest possible
 * RPC. A direct /rest/v1/rpc call (no function) is measured alongside, to show
 * what the function runtime itself costs. Also: database statements per
 * request from pg_stat_statements. Cold start and memory are in memory.ts.
 */
import { mintAccessToken } from "../local/gateway/jwt.ts";
import { JWT_SECRET, loadSigningKeys, PUBLISHABLE_KEY } from "../local/gateway/keys.ts";
import { type BenchGateway, startBenchGateway } from "./lib/gateway.ts";
import {
  benchDatabaseName,
  connect,
  createBenchDatabase,
  dropBenchDatabase,
  type Sql,
} from "./lib/pg.ts";
import { quantile, summarize, type Summary } from "./lib/stats.ts";

export const ENDPOINTS = ["floor", "json", "png", "rest-floor", "rest-qr"] as const;
export type Endpoint = typeof ENDPOINTS[number];
const USERS = 64;

export interface RequestCostOptions {
  concurrencies: number[];
  reps: number;
  secondsPerRun: number;
  statementSamples: number;
  log: (line: string) => void;
}

export interface LoadRun {
  requests: number;
  errors: number;
  perSecond: number;
  p50: number;
  p99: number;
}

export interface CostCell {
  endpoint: Endpoint;
  concurrency: number;
  runs: LoadRun[];
  perSecond: Summary;
  p50: Summary;
  p99: Summary;
}

export interface StatementCount {
  endpoint: Endpoint;
  requests: number;
  perRequest: number;
  rpcPerRequest: number;
  breakdown: { query: string; perRequest: number; meanMs: number }[];
  /** Mean execution time of the RPC statement in the database. */
  rpcMeanMs: number;
}

export interface RequestCostReport {
  cells: CostCell[];
  statements: StatementCount[];
}

export interface Target {
  url: string;
  init: RequestInit;
  expect: (response: Response) => boolean;
}

/** A WhatsApp-like pairing payload: ref, public keys and secret, comma-separated (~240 chars). */
function pairingPayload(i: number): string {
  const bytes = (n: number, seed: number) =>
    btoa(String.fromCharCode(...Array.from({ length: n }, (_, k) => (seed * 31 + k * 7) % 256)));
  return `2@${bytes(60, i)},${bytes(32, i + 1)},${bytes(32, i + 2)},${bytes(32, i + 3)}`;
}

export async function seed(sql: Sql): Promise<{ userId: string; deviceId: string }[]> {
  await sql.unsafe(`
    create function public.bench_floor() returns jsonb
    language sql stable set search_path = ''
    as $$ select jsonb_build_object('user_id', auth.uid()) $$;
    revoke all on function public.bench_floor() from public, anon;
    grant execute on function public.bench_floor() to authenticated;
    -- One live server that stays live for the whole benchmark: no request heals.
    update public.assignment_settings set heartbeat_timeout = interval '1 day';
    insert into public.backend_servers (server_name, is_active, is_healthy, current_load, last_health_ping)
    values ('bench-http', true, true, ${USERS}, now());
  `);
  const rows: { userId: string; deviceId: string }[] = [];
  for (let i = 0; i < USERS; i++) {
    const userId = crypto.randomUUID();
    const deviceId = crypto.randomUUID();
    await sql`
      insert into auth.users (id, aud, role, email, created_at, updated_at)
      values (${userId}, 'authenticated', 'authenticated', ${`bench-http-${i}@example.test`}, now(), now())`;
    await sql`
      insert into public.devices (id, user_id, device_name, status, qr_code, qr_updated_at,
                                  qr_expires_at, assigned_server_id, assigned_at, connecting_since)
      select ${deviceId}, ${userId}, ${`bench phone ${i}`}, 'connecting', ${
      pairingPayload(i)
    }, now(),
             now() + interval '1 hour', s.id, now(), now()
      from public.backend_servers s where s.server_name = 'bench-http'`;
    rows.push({ userId, deviceId });
  }
  return rows;
}

export function targets(
  gateway: BenchGateway,
  endpoint: Endpoint,
  users: { deviceId: string; token: string }[],
): Target[] {
  return users.map(({ deviceId, token }) => {
    const headers = { Authorization: `Bearer ${token}` };
    switch (endpoint) {
      case "floor":
        return {
          url: `${gateway.url}/functions/v1/floor`,
          init: { headers },
          expect: (r) => r.status === 200,
        };
      case "json":
        return {
          url: `${gateway.url}/functions/v1/get-device-qr?device_id=${deviceId}`,
          init: { headers },
          expect: (r) => r.status === 200,
        };
      case "png":
        return {
          url: `${gateway.url}/functions/v1/get-device-qr?device_id=${deviceId}&format=png`,
          init: { headers },
          expect: (r) => r.status === 200 && r.headers.get("content-type") === "image/png",
        };
      case "rest-floor":
        return {
          url: `${gateway.url}/rest/v1/rpc/bench_floor`,
          init: {
            method: "POST",
            headers: { ...headers, apikey: PUBLISHABLE_KEY, "Content-Type": "application/json" },
            body: "{}",
          },
          expect: (r) => r.status === 200,
        };
      case "rest-qr":
        return {
          url: `${gateway.url}/rest/v1/rpc/get_device_qr`,
          init: {
            method: "POST",
            headers: { ...headers, apikey: PUBLISHABLE_KEY, "Content-Type": "application/json" },
            body: JSON.stringify({ p_device_id: deviceId }),
          },
          expect: (r) => r.status === 200,
        };
    }
  });
}

export async function once(target: Target): Promise<boolean> {
  const response = await fetch(target.url, target.init);
  await response.arrayBuffer();
  return target.expect(response);
}

/** Closed-loop load: `concurrency` clients, each sending its next request when the last one ends. */
async function load(all: Target[], concurrency: number, seconds: number): Promise<LoadRun> {
  const latencies: number[] = [];
  let errors = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async (_, client) => {
    const target = all[client % all.length];
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const ok = await once(target).catch(() => false);
      latencies.push(performance.now() - t0);
      if (!ok) errors++;
    }
  }));
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    requests: latencies.length,
    errors,
    perSecond: latencies.length / elapsed,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
  };
}

async function countStatements(
  sql: Sql,
  dbName: string,
  all: Target[],
  endpoint: Endpoint,
  n: number,
): Promise<StatementCount> {
  await sql`
    select extensions.pg_stat_statements_reset(
      0::oid, (select oid from pg_database where datname = ${dbName}), 0::bigint)`;
  for (let i = 0; i < n; i++) await once(all[i % all.length]);
  const rows = await sql`
    select query, calls::int as calls, mean_exec_time as mean from extensions.pg_stat_statements
    where dbid = (select oid from pg_database where datname = ${dbName})
      and query not ilike '%pg_stat_statements%'
    order by calls desc`;
  const rpc = endpoint.endsWith("floor") ? "bench_floor" : "p_device_id";
  const total = rows.reduce((sum, r) => sum + Number(r.calls), 0);
  const rpcRows = rows.filter((r) => String(r.query).includes(rpc));
  const rpcCalls = rpcRows.reduce((sum, r) => sum + Number(r.calls), 0);
  return {
    endpoint,
    requests: n,
    perRequest: total / n,
    rpcPerRequest: rpcCalls / n,
    rpcMeanMs: Number(rpcRows[0]?.mean ?? NaN),
    breakdown: rows.map((r) => ({
      query: String(r.query).replace(/\s+/g, " ").slice(0, 90),
      perRequest: Number(r.calls) / n,
      meanMs: Number(r.mean),
    })),
  };
}

export async function runRequestCost(options: RequestCostOptions): Promise<RequestCostReport> {
  const dbName = benchDatabaseName("bench_http");
  const dbUrl = await createBenchDatabase(dbName);
  const sql = connect(dbUrl, 2);
  let gateway: BenchGateway | null = null;
  try {
    const users = await seed(sql);
    const { privateJwk } = await loadSigningKeys();
    gateway = await startBenchGateway(dbUrl);
    const tokens = await Promise.all(users.map(async ({ userId, deviceId }) => ({
      deviceId,
      token: await mintAccessToken(userId, {
        url: gateway!.url,
        jwtSecret: JWT_SECRET,
        privateJwk,
      }, { expiresIn: 3 * 3600 }),
    })));
    const byEndpoint = Object.fromEntries(
      ENDPOINTS.map((e) => [e, targets(gateway!, e, tokens)]),
    ) as Record<Endpoint, Target[]>;

    options.log("request cost: warming up");
    for (const endpoint of ENDPOINTS) {
      for (const target of byEndpoint[endpoint].slice(0, 4)) {
        if (!(await once(target))) {
          throw new Error(`${endpoint} answered unexpectedly: ${target.url}`);
        }
      }
      await load(byEndpoint[endpoint], 16, 0.5);
    }

    const runs = new Map<string, LoadRun[]>();
    for (let rep = 0; rep < options.reps; rep++) {
      for (const concurrency of options.concurrencies) {
        // Interleaved, so drift on this shared machine hits every endpoint alike.
        for (const endpoint of ENDPOINTS) {
          options.log(`request cost: rep ${rep + 1}, ${endpoint} at ${concurrency}`);
          const run = await load(byEndpoint[endpoint], concurrency, options.secondsPerRun);
          const key = `${endpoint}@${concurrency}`;
          runs.set(key, [...(runs.get(key) ?? []), run]);
        }
      }
    }
    const cells: CostCell[] = [];
    for (const concurrency of options.concurrencies) {
      for (const endpoint of ENDPOINTS) {
        const r = runs.get(`${endpoint}@${concurrency}`)!;
        cells.push({
          endpoint,
          concurrency,
          runs: r,
          perSecond: summarize(r.map((x) => x.perSecond)),
          p50: summarize(r.map((x) => x.p50)),
          p99: summarize(r.map((x) => x.p99)),
        });
      }
    }

    options.log("request cost: statements per request");
    const statements: StatementCount[] = [];
    for (const endpoint of ENDPOINTS) {
      statements.push(
        await countStatements(
          sql,
          dbName,
          byEndpoint[endpoint],
          endpoint,
          options.statementSamples,
        ),
      );
    }
    return { cells, statements };
  } finally {
    await gateway?.stop();
    await sql.end();
    await dropBenchDatabase(dbName);
  }
}

if (import.meta.main) {
  const report = await runRequestCost({
    concurrencies: [1, 16, 64],
    reps: 1,
    secondsPerRun: 1,
    statementSamples: 50,
    log: (line) => console.error(line),
  });
  console.log(JSON.stringify(report, null, 2));
}
