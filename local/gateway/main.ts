/**
 * The Docker-free local Supabase API gateway: Data API RPC, edge functions and
 * the project's JWKS on one port, in front of the local database.
 * Started and stopped by local/gateway.sh; every setting has a default.
 *
 *   GATEWAY_HOST / GATEWAY_PORT   where to listen (127.0.0.1:54321; port 0 picks a free one)
 *   GATEWAY_STATE_DIR             signing key, request log, function logs (<repo>/.local)
 *   SUPABASE_DB_URL               the database, as functions get it (postgres@127.0.0.1:54322)
 *   GATEWAY_DB_URL                how the gateway connects (same server, as `authenticator`)
 *   GATEWAY_AUTH_DB_URL           how its Auth connects (same server, as `supabase_auth_admin`)
 *   FUNCTIONS_DIR                 functions to serve (<repo>/supabase/functions)
 *   FUNCTIONS_CONFIG              their config.toml (FUNCTIONS_DIR/../config.toml)
 *   GATEWAY_ENV_FILE              where to write .env.local (<repo>/.env.local; empty: don't)
 *   GATEWAY_PREWARM               start every function at startup (1; 0: on first request)
 *   GATEWAY_WATCH                 restart a function when its files change (1; 0: never)
 *   ALLOWED_ORIGINS               CORS origins, comma-separated (*), passed on to functions
 *   PROJECT_KEYS                  the kind of project to imitate: signing (default), legacy
 *                                 or both (see keys.ts); decides the API keys and token
 *                                 algorithms accepted, the functions' env and .env.local
 *   SIGNING_KEYS_PATH             the signing keys file (supabase/signing_keys.json; see
 *                                 signingKeysPath in keys.ts)
 */
import postgres from "postgres";
import { parse as parseToml } from "smol-toml";
import { authSettings } from "./auth.ts";
import { FunctionHost } from "./functions.ts";
import { createJwtVerifier } from "./jwt.ts";
import {
  ANON_KEY,
  JWT_SECRET,
  loadSigningKeys,
  projectKeysFromEnv,
  projectProfile,
  PUBLISHABLE_KEY,
  SECRET_KEY,
  SERVICE_ROLE_KEY,
  signingKeysPath,
} from "./keys.ts";
import { RequestLog } from "./request_log.ts";
import { createHandler, errorResponse } from "./server.ts";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const env = (name: string, fallback: string) => Deno.env.get(name) ?? fallback;

const host = env("GATEWAY_HOST", "127.0.0.1");
const port = Number(env("GATEWAY_PORT", "54321"));
const stateDir = env("GATEWAY_STATE_DIR", `${REPO}/.local`);
const dbUrl = env("SUPABASE_DB_URL", "postgresql://postgres:postgres@127.0.0.1:54322/postgres");
const asRole = (role: string) => {
  const url = new URL(dbUrl);
  url.username = role;
  url.password = "postgres";
  return url.href;
};
const gatewayDbUrl = env("GATEWAY_DB_URL", asRole("authenticator"));
const authDbUrl = env("GATEWAY_AUTH_DB_URL", asRole("supabase_auth_admin"));
const functionsDir = env("FUNCTIONS_DIR", `${REPO}/supabase/functions`);
const functionsConfig = env(
  "FUNCTIONS_CONFIG",
  `${functionsDir.replace(/\/[^/]*\/?$/, "")}/config.toml`,
);
const envFile = env("GATEWAY_ENV_FILE", `${REPO}/.env.local`);
const prewarm = env("GATEWAY_PREWARM", "1") !== "0";

// postgres.js 3.4.9 can write to a socket that closed meanwhile when the
// database goes away (connection.js nextWrite: `socket.write` on null), and
// under Deno that is an uncaught exception that would end the gateway. PostgREST
// keeps serving 503s through an outage (tests/chaos/db_outage_test.ts), so this
// one error is logged and the connection's own error handling takes over;
// anything else still ends the process.
globalThis.addEventListener("error", (event) => {
  const error = event.error as Error | undefined;
  if (
    error instanceof TypeError && /reading 'write'/.test(error.message) &&
    /postgres\/[^/]+\/src\/connection\.js/.test(error.stack ?? "")
  ) {
    event.preventDefault();
    console.error(`gateway: a write to a closed database socket was dropped (${error.message})`);
  }
});

await Deno.mkdir(`${stateDir}/gateway`, { recursive: true });
const profile = projectProfile(projectKeysFromEnv());
const signing = await loadSigningKeys();
// A legacy project publishes no key: its only one is the shared JWT secret.
// On the other kinds the legacy secret stays trusted ("previously used")
// until its owner revokes it, so HS256 tokens verify on every kind.
const jwks = profile.signingKeys ? signing.jwks : { keys: [] };
const verifier = createJwtVerifier(JWT_SECRET, jwks);
const sql = postgres(gatewayDbUrl, {
  max: 20,
  idle_timeout: 30,
  connect_timeout: 5,
  // postgres.js waits up to 20 s between reconnect attempts by default, and
  // queues queries meanwhile: during an outage requests would hang instead of
  // failing with PostgREST's 503. Retry quickly and fail fast instead.
  backoff: () => 0.2,
  onnotice: () => {},
  connection: { application_name: "local-gateway" },
});
// GoTrue keeps its own small pool, as the Auth server of a hosted project does.
const authSql = postgres(authDbUrl, {
  max: 5,
  idle_timeout: 30,
  connect_timeout: 5,
  backoff: () => 0.2,
  onnotice: () => {},
  connection: { application_name: "local-gateway-auth" },
});
// The `[auth]` settings of the config.toml the gateway honours, as `supabase start` passes them to GoTrue.
const authConfig = (parseToml(await Deno.readTextFile(functionsConfig)) as { auth?: object }).auth;
const log = await RequestLog.open(env("GATEWAY_REQUEST_LOG", `${stateDir}/gateway/requests.log`));

/** Starts the functions once the port is known, since SUPABASE_URL carries it. */
function functionHost(url: string): FunctionHost {
  // What a hosted function finds in its environment (docs: guides/functions/secrets).
  // The `sb_` keys exist only once the project created them; SUPABASE_JWKS is
  // what /auth/v1/.well-known/jwks.json serves, so it is empty on a legacy
  // project. The legacy keys stay injected after they are disabled; the
  // gateway refuses them.
  const functionEnv: Record<string, string> = {
    SUPABASE_URL: url,
    ...(profile.newApiKeys
      ? {
        SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: PUBLISHABLE_KEY }),
        SUPABASE_SECRET_KEYS: JSON.stringify({ default: SECRET_KEY }),
      }
      : {}),
    SUPABASE_JWKS: JSON.stringify(jwks),
    SUPABASE_ANON_KEY: ANON_KEY,
    SUPABASE_SERVICE_ROLE_KEY: SERVICE_ROLE_KEY,
    SUPABASE_DB_URL: dbUrl,
    SB_REGION: "local",
  };
  const origins = Deno.env.get("ALLOWED_ORIGINS");
  if (origins !== undefined) functionEnv.ALLOWED_ORIGINS = origins;
  return new FunctionHost({
    functionsDir,
    configToml: functionsConfig,
    env: functionEnv,
    logDir: `${stateDir}/gateway/functions`,
    verifier,
    errorResponse,
  });
}

let functions: FunctionHost | null = null;
let url = "";
const handler = createHandler({
  sql,
  verifier,
  profile,
  jwks,
  log,
  get functions() {
    return functions!;
  },
  auth: {
    sql: authSql,
    signing: { jwtSecret: JWT_SECRET, privateJwk: signing.privateJwk },
    settings: authSettings(authConfig),
    get issuerUrl() {
      return url;
    },
  },
});

const server = Deno.serve({
  hostname: host,
  port,
  onListen: () => {},
}, handler);
url = `http://${host}:${server.addr.port}`;
functions = functionHost(url);
if (env("GATEWAY_WATCH", "1") !== "0") functions.watch();

if (envFile !== "") {
  // Only the keys that work on this kind of project, so a client configured
  // from this file behaves as it would against a hosted project of the kind.
  const lines = [
    "# Written by local/gateway.sh: the local stack's URL and keys, as `supabase status -o env` prints them.",
    `# PROJECT_KEYS=${profile.kind} (local/gateway/keys.ts). ${
      profile.signingKeys
        ? `User tokens: ES256 with the first key of ${await signingKeysPath()}; HS256 with the JWT secret still valid.`
        : "User tokens: HS256 with the JWT secret."
    }`,
    `SUPABASE_URL=${url}`,
    ...(profile.newApiKeys
      ? [`SUPABASE_PUBLISHABLE_KEY=${PUBLISHABLE_KEY}`, `SUPABASE_SECRET_KEY=${SECRET_KEY}`]
      : []),
    ...(profile.legacyApiKeys
      ? [`SUPABASE_ANON_KEY=${ANON_KEY}`, `SUPABASE_SERVICE_ROLE_KEY=${SERVICE_ROLE_KEY}`]
      : []),
    `SUPABASE_JWT_SECRET=${JWT_SECRET}`,
    `SUPABASE_DB_URL=${dbUrl}`,
  ];
  await Deno.writeTextFile(envFile, lines.join("\n") + "\n");
}

console.log(
  `gateway listening on ${url} (functions: ${functionsDir}; PROJECT_KEYS=${profile.kind})`,
);

if (prewarm) {
  const started = performance.now();
  functions.prewarm().then(() =>
    console.log(`functions started in ${(performance.now() - started).toFixed(0)} ms`)
  );
}

let stopping = false;
async function stop(signal: Deno.Signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: stopping`);
  await functions?.shutdown();
  await server.shutdown();
  await sql.end({ timeout: 2 });
  await authSql.end({ timeout: 2 });
  log.close();
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
