// reassign-device: (re)start pairing of a device on a live server; operators also in bulk.
// Logic in ./handler.ts.
import { supabaseAuth } from "../_shared/auth.ts";
import { createReassignDeviceHandler } from "./handler.ts";

// Users (their access token) and operators (the secret key, or the legacy
// service_role key), both checked in code.
// verify_jwt = false: see supabase/functions/README.md ("Auth").
export default {
  fetch: createReassignDeviceHandler({
    authenticate: supabaseAuth({
      operators: true,
      serviceRoleKey: Deno.env.get("SUPABASE_SERVICE_ROLE_KEY"),
    }),
    allowedOrigins: Deno.env.get("ALLOWED_ORIGINS"),
  }),
};
