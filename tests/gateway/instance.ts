/**
 * A private gateway for the fidelity tests: its own port, the fixture
 * functions of tests/gateway/fixtures, no .env.local, its own request log. It
 * shares the local database (started if need be) and the signing key with the
 * stack on :54321, which it leaves alone.
 */
import type * as jose from "jose";
import { spawnGateway } from "../../local/gateway/spawn.ts";
import { JWT_SECRET, loadSigningKeys } from "../../local/gateway/keys.ts";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
export const FIXTURES = `${REPO}/tests/gateway/fixtures/supabase`;

export interface GatewayInstance {
  url: string;
  dbUrl: string;
  stateDir: string;
  requestLog: string;
  /** What `mintAccessToken` needs to sign user tokens this gateway accepts. */
  signing: { url: string; jwtSecret: string; privateJwk: jose.JWK };
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
  const gateway = await spawnGateway({
    GATEWAY_STATE_DIR: stateDir,
    GATEWAY_ENV_FILE: "",
    GATEWAY_PREWARM: "0",
    GATEWAY_REQUEST_LOG: requestLog,
    SUPABASE_DB_URL: dbUrl,
    FUNCTIONS_DIR: `${FIXTURES}/functions`,
    ...env,
  });

  const { privateJwk } = await loadSigningKeys();
  return {
    url: gateway.url,
    dbUrl,
    stateDir,
    requestLog,
    signing: { url: gateway.url, jwtSecret: JWT_SECRET, privateJwk },
    async stop() {
      await gateway.stop();
      await Deno.remove(requestLog);
    },
  };
}
