// get-device-qr: the QR code of the caller's own device, healing it on the way.
// Logic in ./handler.ts; the HTTP API is described in the README.
import { supabaseAuth } from "../_shared/auth.ts";
import { CachedQrImages } from "../_shared/qr.ts";
import { createGetDeviceQrHandler } from "./handler.ts";

// Signed-in users only, checked in code; every RPC runs as them under RLS.
// verify_jwt = false: see supabase/functions/README.md ("Auth").
export default {
  fetch: createGetDeviceQrHandler({
    authenticate: supabaseAuth({ operators: false }),
    images: new CachedQrImages(),
    allowedOrigins: Deno.env.get("ALLOWED_ORIGINS"),
  }),
};
