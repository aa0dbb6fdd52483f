import assert from "node:assert/strict";
import { type CliIo, formatHealth, parseEnvFile, run } from "../../cli/operator.ts";
import { DEVICE_ID } from "./fakes.ts";

interface Sent {
  url: string;
  headers: Headers;
  body: unknown;
}

function io(options: {
  env?: Record<string, string>;
  envFile?: string | null;
  answer?: (sent: Sent) => Response;
} = {}) {
  const sent: Sent[] = [];
  const out: string[] = [];
  const err: string[] = [];
  const cli: CliIo = {
    env: (name) => options.env?.[name],
    readEnvFile: () => Promise.resolve(options.envFile ?? null),
    fetch: async (input, init) => {
      const request = new Request(input, init);
      const entry = { url: request.url, headers: request.headers, body: await request.json() };
      sent.push(entry);
      return options.answer?.(entry) ??
        Response.json({ scope: "inactive", dry_run: false, count: 0, devices: [] });
    },
    out: (line) => out.push(line),
    err: (line) => err.push(line),
  };
  return { cli, sent, out, err };
}

const ENV = { SUPABASE_URL: "https://example.supabase.co/", SUPABASE_SECRET_KEY: "sb_secret_cli" };

Deno.test("without SUPABASE_URL and SUPABASE_SECRET_KEY it refuses, naming both, and calls nothing", async () => {
  const { cli, sent, err } = io();
  assert.equal(await run(["reset-all"], cli), 2);
  assert.equal(sent.length, 0);
  assert.match(err.join("\n"), /SUPABASE_URL and SUPABASE_SECRET_KEY/);
});

Deno.test("a publishable key in SUPABASE_SECRET_KEY is refused", async () => {
  const { cli, sent, err } = io({ env: { ...ENV, SUPABASE_SECRET_KEY: "sb_publishable_x" } });
  assert.equal(await run(["status"], cli), 2);
  assert.equal(sent.length, 0);
  assert.match(err.join("\n"), /secret key/);
});

Deno.test("settings come from .env.local when the environment has none", async () => {
  const { cli, sent } = io({
    envFile:
      '# local stack\nSUPABASE_URL="http://127.0.0.1:54321"\nSUPABASE_SECRET_KEY=sb_secret_file\n',
  });
  assert.equal(await run(["reset-inactive"], cli), 0);
  assert.equal(sent[0].url, "http://127.0.0.1:54321/functions/v1/reassign-device");
  assert.equal(sent[0].headers.get("apikey"), "sb_secret_file");
});

Deno.test("the environment wins over .env.local", async () => {
  const { cli, sent } = io({ env: ENV, envFile: "SUPABASE_SECRET_KEY=sb_secret_file" });
  await run(["reset-inactive"], cli);
  assert.equal(sent[0].headers.get("apikey"), "sb_secret_cli");
  assert.equal(sent[0].url, "https://example.supabase.co/functions/v1/reassign-device");
});

for (
  const [args, body] of [
    [["reset-device", DEVICE_ID], { scope: "device", device_id: DEVICE_ID, dry_run: false }],
    [["reset-device", DEVICE_ID, "--dry-run"], {
      scope: "device",
      device_id: DEVICE_ID,
      dry_run: true,
    }],
    [["reset-inactive", "--dry-run"], { scope: "inactive", dry_run: true }],
    [["reset-all"], { scope: "all_connecting", dry_run: false }],
    [["status"], { scope: "health" }],
  ] as const
) {
  Deno.test(`\`${args.join(" ")}\` posts ${JSON.stringify(body)}`, async () => {
    const { cli, sent } = io({
      env: ENV,
      answer: () =>
        Response.json(body.scope === "health" ? {} : { ...body, count: 0, devices: [] }),
    });
    assert.equal(await run([...args], cli), 0);
    assert.deepEqual(sent.map((s) => s.body), [body]);
  });
}

for (
  const args of [["reset-device"], ["reset-all", "extra"], ["status", "--dry-run"], ["nuke"], [
    "reset-all",
    "--force",
  ]]
) {
  Deno.test(`\`${args.join(" ")}\` is a usage error and calls nothing`, async () => {
    const { cli, sent } = io({ env: ENV });
    assert.equal(await run(args, cli), 2);
    assert.equal(sent.length, 0);
  });
}

Deno.test("a dry run says so and lists what would move", async () => {
  const { cli, out } = io({
    env: ENV,
    answer: () =>
      Response.json({
        scope: "inactive",
        dry_run: true,
        count: 1,
        devices: [{ id: DEVICE_ID, from: "dead-server", to: null }],
      }),
  });
  await run(["reset-inactive", "--dry-run"], cli);
  const text = out.join("\n");
  assert.match(text, /DRY RUN: would reassign 1 device \(scope inactive\)/);
  assert.match(text, new RegExp(DEVICE_ID));
  assert.match(text, /waits for a server/);
});

Deno.test("an API error is printed with its code and Retry-After, exit 1", async () => {
  const { cli, err } = io({
    env: ENV,
    answer: () =>
      Response.json(
        {
          error: {
            code: "no_active_servers",
            message: "No backend server is live.",
            details: null,
          },
        },
        { status: 503, headers: { "retry-after": "5" } },
      ),
  });
  assert.equal(await run(["reset-all"], cli), 1);
  assert.match(
    err.join("\n"),
    /503 no_active_servers: No backend server is live\. \(retry after 5 s\)/,
  );
});

Deno.test("an unreachable project is reported without a stack, exit 1", async () => {
  const { cli, err } = io({ env: ENV });
  cli.fetch = () => Promise.reject(new TypeError("error sending request: connection refused"));
  assert.equal(await run(["status"], cli), 1);
  assert.match(err.join("\n"), /cannot reach https:\/\/example.supabase.co/);
  assert.doesNotMatch(err.join("\n"), /at /);
});

Deno.test("the secret key never appears in the output", async () => {
  const { cli, out, err } = io({
    env: ENV,
    answer: () =>
      Response.json({ error: { code: "unauthorized", message: "nope" } }, { status: 401 }),
  });
  await run(["status"], cli);
  assert.doesNotMatch([...out, ...err].join("\n"), /sb_secret_cli/);
});

Deno.test("status shows servers with heartbeat ages, device counts, orphaned/stale and cron runs", () => {
  const text = formatHealth({
    now: "2026-11-28T19:00:00Z",
    servers: [
      {
        id: "s1",
        name: "railway-1",
        live: true,
        is_active: true,
        is_healthy: true,
        current_load: 3,
        max_capacity: 50,
        heartbeat_age_ms: 4200,
        connecting_devices: 2,
      },
      {
        id: "s2",
        name: "railway-2",
        live: false,
        is_active: false,
        is_healthy: true,
        current_load: 0,
        max_capacity: null,
        heartbeat_age_ms: 600_000,
        connecting_devices: 0,
      },
    ],
    devices_by_status: { connecting: 3, connected: 7 },
    devices_by_server: [{ server_id: null, server_name: null, status: "connecting", count: 1 }],
    orphaned: 1,
    stale: 2,
    cron_jobs: [{
      jobname: "device-assignment-maintenance",
      schedule: "10 seconds",
      active: true,
      last_run: { status: "succeeded", start_time: "2026-11-28T18:59:50Z" },
    }],
  });
  assert.match(text, /orphaned devices: 1 +stale devices: 2/);
  assert.match(text, /railway-1 +yes +yes +yes +3\/50 +4\.2 s +2/);
  assert.match(text, /railway-2 +NO +no +yes +0\/∞ +10 min/);
  assert.match(text, /connected +7/);
  assert.match(text, /\(unassigned\) +connecting +1/);
  assert.match(
    text,
    /device-assignment-maintenance +10 seconds +yes +2026-11-28T18:59:50Z +succeeded/,
  );
});

Deno.test(".env.local parsing handles comments, quotes and export", () => {
  assert.deepEqual(
    parseEnvFile("# c\nexport A=1\nB='two'\nC=\"three\"\n\nnot a line\nD=a=b\n"),
    { A: "1", B: "two", C: "three", D: "a=b" },
  );
});

Deno.test("a dry run with no live server prints its plan and why nothing would move now", async () => {
  const { cli, out } = io({
    env: ENV,
    answer: () =>
      Response.json({
        scope: "inactive",
        dry_run: true,
        count: 1,
        devices: [{ id: DEVICE_ID, from: "5e000000-0000-4000-8000-000000000003", to: null }],
        reason: "no_active_servers",
      }),
  });
  assert.equal(await run(["reset-inactive", "--dry-run"], cli), 0);
  const printed = out.join("\n");
  assert.match(printed, /DRY RUN: would reassign 1 device/);
  assert.match(printed, /no server is live/);
  assert.match(printed, new RegExp(DEVICE_ID));
});
