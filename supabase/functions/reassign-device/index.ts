// reassign-device: (re)start pairing of a device on a live server; operators also in bulk.
// Logic in ./handler.ts.
import { supabaseAuth } from "../_shared/auth.ts";
import { createReassignDeviceHandler } from "./handler.ts";

// Users (their JWT) and operators (the secret key, or the legacy service-role
// key) are both checked in code by @supabase/server, so verify_jwt = false in
// config.toml: the platform check would reject a secret key, which is no JWT.
export default {
  fetch: createReassignDeviceHandler({
    authenticate: supabaseAuth({
      operators: true,
      serviceRoleKey: Deno.env.get("SUPABASE_SERVICE_ROLE_KEY"),
    }),
    allowedOrigins: Deno.env.get("ALLOWED_ORIGINS"),
  }),
};
