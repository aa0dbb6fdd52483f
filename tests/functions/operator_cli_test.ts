import assert from "node:assert/strict";
import { type CliIo, formatHealth, run } from "../../cli/operator.ts";
import { backendEmail } from "../../cli/backend_accounts.ts";
import { readEnvFile } from "../../worker/env.ts";
import { DEVICE_ID } from "./fakes.ts";

interface Sent {
  url: string;
  headers: Headers;
  body: unknown;
}

function io(options: {
  env?: Record<string, string>;
  envFile?: Record<string, string>;
  answer?: (sent: Sent) => Response;
} = {}) {
  const sent: Sent[] = [];
  const out: string[] = [];
  const err: string[] = [];
  const cli: CliIo = {
    env: (name) => options.env?.[name],
    readEnvFile: () => options.envFile ?? {},
    fetch: async (input, init) => {
      const request = new Request(input, init);
      const text = await request.text();
      const entry = { url: request.url, headers: request.headers, body: text && JSON.parse(text) };
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
    envFile: { SUPABASE_URL: "http://127.0.0.1:54321", SUPABASE_SECRET_KEY: "sb_secret_file" },
  });
  assert.equal(await run(["reset-inactive"], cli), 0);
  assert.equal(sent[0].url, "http://127.0.0.1:54321/functions/v1/reassign-device");
  assert.equal(sent[0].headers.get("apikey"), "sb_secret_file");
});

Deno.test("the environment wins over .env.local", async () => {
  const { cli, sent } = io({ env: ENV, envFile: { SUPABASE_SECRET_KEY: "sb_secret_file" } });
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

Deno.test("the env file the CLI reads (worker/env.ts) handles comments, quotes and export", () => {
  const path = Deno.makeTempFileSync({ suffix: ".env" });
  try {
    Deno.writeTextFileSync(path, "# c\nexport A=1\nB='two'\nC=\"three\"\n\nnot a line\nD=a=b\n");
    assert.deepEqual(readEnvFile(new URL(`file://${path}`)), {
      A: "1",
      B: "two",
      C: "three",
      D: "a=b",
    });
  } finally {
    Deno.removeSync(path);
  }
});

// --- backend server accounts ---------------------------------------------------------

/** Answers like Auth's admin API and PostgREST, recording each call. */
function serverApi(options: { authError?: Response; rpcError?: Response } = {}) {
  return (sent: Sent): Response => {
    const path = new URL(sent.url).pathname;
    if (path === "/auth/v1/admin/users") {
      if (options.authError) return options.authError;
      const body = sent.body as { email: string; app_metadata: Record<string, unknown> };
      return Response.json({
        id: "5e000000-0000-4000-8000-00000000000a",
        aud: "authenticated",
        role: "authenticated",
        email: body.email,
        app_metadata: { provider: "email", providers: ["email"], ...body.app_metadata },
        user_metadata: {},
        identities: [],
        created_at: "2026-12-01T00:00:00Z",
      });
    }
    if (path === "/rest/v1/rpc/set_backend_server_enabled") {
      return options.rpcError ?? Response.json({ server: "x", enabled: true });
    }
    return Response.json({ message: `unexpected ${path}` }, { status: 404 });
  };
}

Deno.test("`server add` creates the account, prints its credentials once, then enables it", async () => {
  const { cli, sent, out } = io({
    env: { ...ENV, SUPABASE_PUBLISHABLE_KEY: "sb_publishable_cli" },
    answer: serverApi(),
  });
  assert.equal(await run(["server", "add", "railway-7"], cli), 0);
  assert.deepEqual(sent.map((s) => new URL(s.url).pathname), [
    "/auth/v1/admin/users",
    "/rest/v1/rpc/set_backend_server_enabled",
  ]);
  const created = sent[0].body as Record<string, unknown>;
  assert.equal(sent[0].headers.get("authorization"), "Bearer sb_secret_cli");
  assert.equal(created.email, "railway-7@backend.invalid");
  assert.equal(created.email_confirm, true);
  assert.deepEqual(created.app_metadata, { device_backend: "railway-7" });
  const password = created.password as string;
  assert.ok(password.length >= 43, "256 random bits");
  assert.deepEqual(sent[1].body, { p_server_name: "railway-7", p_enabled: true });

  const text = out.join("\n");
  assert.equal(text.split(password).length - 1, 1, "the password is printed exactly once");
  for (
    const line of [
      "SUPABASE_URL=https://example.supabase.co",
      "SUPABASE_PUBLISHABLE_KEY=sb_publishable_cli",
      "BACKEND_SERVER_NAME=railway-7",
      "BACKEND_EMAIL=railway-7@backend.invalid",
      `BACKEND_PASSWORD=${password}`,
    ]
  ) {
    assert.match(text, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m"));
  }
  assert.match(text, /server railway-7 enabled/);
});

Deno.test("two `server add` runs never share a password", async () => {
  const passwords = [];
  for (let i = 0; i < 2; i++) {
    const { cli, sent } = io({ env: ENV, answer: serverApi() });
    assert.equal(await run(["server", "add", "railway-7"], cli), 0);
    passwords.push((sent[0].body as { password: string }).password);
  }
  assert.notEqual(passwords[0], passwords[1]);
});

Deno.test("`server disable` and `server enable` call set_backend_server_enabled only", async () => {
  for (const [action, enabled] of [["disable", false], ["enable", true]] as const) {
    const { cli, sent, out } = io({ env: ENV, answer: serverApi() });
    assert.equal(await run(["server", action, "railway-7"], cli), 0);
    assert.equal(sent.length, 1);
    assert.equal(new URL(sent[0].url).pathname, "/rest/v1/rpc/set_backend_server_enabled");
    assert.equal(sent[0].headers.get("apikey"), "sb_secret_cli");
    assert.deepEqual(sent[0].body, { p_server_name: "railway-7", p_enabled: enabled });
    assert.match(out.join("\n"), new RegExp(`server railway-7 ${action}d`));
  }
});

Deno.test("a server name the SQL would refuse is refused before any call", async () => {
  for (const name of ["", "   ", "x".repeat(201)]) {
    const { cli, sent, err } = io({ env: ENV, answer: serverApi() });
    assert.equal(await run(["server", "add", name], cli), 2, JSON.stringify(name));
    assert.equal(sent.length, 0);
    assert.match(err.join("\n"), /1 to 200 characters/);
  }
  const { cli, sent } = io({ env: ENV, answer: serverApi() });
  assert.equal(await run(["server", "add", "x".repeat(200)], cli), 0, "200 characters is a name");
  assert.equal(sent.length, 2);
});

Deno.test("a name that is no plain email local part gets a digest login, distinct per name", async () => {
  assert.equal(await backendEmail("railway-7"), "railway-7@backend.invalid");
  const upper = await backendEmail("Railway-7");
  const spaced = await backendEmail("railway 7");
  assert.match(upper, /^server-[0-9a-f]{20}@backend\.invalid$/);
  assert.match(spaced, /^server-[0-9a-f]{20}@backend\.invalid$/);
  assert.notEqual(upper, spaced);
  assert.equal(upper, await backendEmail("Railway-7"), "stable for one name");
});

Deno.test("`server add` of an existing account stops before enabling and says why", async () => {
  const { cli, sent, err, out } = io({
    env: ENV,
    answer: serverApi({
      authError: Response.json({
        code: "email_exists",
        message: "A user with this email address has already been registered",
      }, { status: 422, headers: { "x-supabase-api-version": "2024-01-01" } }),
    }),
  });
  assert.equal(await run(["server", "add", "railway-7"], cli), 1);
  assert.equal(sent.length, 1, "set_backend_server_enabled is not called");
  assert.equal(out.length, 0, "no credentials are printed");
  assert.match(err.join("\n"), /already has an account \(railway-7@backend\.invalid\)/);
});

Deno.test("when enabling fails, `server add` has already shown the credentials and exits 1", async () => {
  const { cli, out, err } = io({
    env: ENV,
    answer: serverApi({
      rpcError: Response.json({
        code: "42501",
        message: "permission denied for function set_backend_server_enabled",
        details: null,
        hint: null,
      }, { status: 403 }),
    }),
  });
  assert.equal(await run(["server", "add", "railway-7"], cli), 1);
  assert.match(out.join("\n"), /^BACKEND_PASSWORD=\S{43,}$/m);
  assert.match(err.join("\n"), /42501: permission denied/);
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

Deno.test("status puts an open fleet incident first, with its servers and the devices it holds", () => {
  const text = formatHealth({
    now: "2026-12-05T06:00:00Z",
    incidents: [{
      code: "version_outdated",
      since: "2026-12-05T05:58:00Z",
      servers: ["railway-1", "railway-2"],
      devices_held: 41,
    }],
    servers: [],
  });
  const incident = text.indexOf("FLEET INCIDENTS");
  assert.ok(incident > 0 && incident < text.indexOf("SERVERS\n"), text);
  assert.match(text, /version_outdated .*railway-1, railway-2 .*41/);
  assert.doesNotMatch(formatHealth({ servers: [] }), /FLEET INCIDENTS/);
});
