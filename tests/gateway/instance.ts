/**
 * A private gateway for the fidelity tests: its own port, the fixture
 * functions of tests/gateway/fixtures, no .env.local, its own request log. It
 * shares the local database (started if need be) and the signing key with the
 * stack on :54321, which it leaves alone.
 */
const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
export const FIXTURES = `${REPO}/tests/gateway/fixtures/supabase`;

export interface GatewayInstance {
  url: string;
  dbUrl: string;
  stateDir: string;
  requestLog: string;
  stop(): Promise<void>;
}

async function run(script: string, ...args: string[]): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(`${REPO}/${script}`, {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) throw new Error(`${script} failed: ${new TextDecoder().decode(stderr)}`);
  return new TextDecoder().decode(stdout).trim();
}

export async function startGateway(env: Record<string, string> = {}): Promise<GatewayInstance> {
  await run("local/db.sh", "start");
  const dbUrl = await run("local/db.sh", "url");
  const stateDir = await run("local/db.sh", "state-dir");
  const requestLog = await Deno.makeTempFile({ prefix: "gateway-requests-", suffix: ".log" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--quiet",
      "--unstable-no-legacy-abort",
      `${REPO}/local/gateway/main.ts`,
    ],
    cwd: REPO,
    env: {
      GATEWAY_PORT: "0",
      GATEWAY_STATE_DIR: stateDir,
      GATEWAY_ENV_FILE: "",
      GATEWAY_PREWARM: "0",
      GATEWAY_REQUEST_LOG: requestLog,
      SUPABASE_DB_URL: dbUrl,
      FUNCTIONS_DIR: `${FIXTURES}/functions`,
      ...env,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();

  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  let url: string | null = null;
  while (url === null) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`gateway exited before listening:\n${output}`);
    output += value;
    url = /gateway listening on (\S+)/.exec(output)?.[1] ?? null;
  }
  // Keep reading so the gateway never blocks on a full pipe.
  const drained = (async () => {
    while (!(await lines.read()).done) { /* discard */ }
  })();

  return {
    url,
    dbUrl,
    stateDir,
    requestLog,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await drained;
      await Deno.remove(requestLog);
    },
  };
}
