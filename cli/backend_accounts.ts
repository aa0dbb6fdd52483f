/**
 * Backend server accounts: a Supabase Auth user whose
 * `app_metadata.device_backend` names the one server it may act as (the SQL
 * guard, device_assignment.authorize_server). Created with the secret key
 * through Auth's admin API; used by `operator server add` and by the fleet
 * simulator, which gives each of its servers an account of its own.
 */
import type { SupabaseClient } from "@supabase/supabase-js";

export interface BackendAccount {
  userId: string;
  email: string;
  password: string;
}

/**
 * The login of a server's account. Only `app_metadata.device_backend` says
 * which server an account is; the email is a handle, in the reserved
 * `.invalid` domain so that Auth never mails anyone. A name that is not a
 * plain lower-case local part is replaced by a digest of itself, since Auth
 * lower-cases emails and two names must never share one.
 */
export async function backendEmail(name: string): Promise<string> {
  if (/^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,62}[a-z0-9]?$/.test(name) && !name.endsWith(".")) {
    return `${name}@backend.invalid`;
  }
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(name)),
  );
  const hex = Array.from(digest.slice(0, 10), (b) => b.toString(16).padStart(2, "0")).join("");
  return `server-${hex}@backend.invalid`;
}

/** 32 random bytes, base64url: 256 bits, within bcrypt's 72-byte limit. */
export function strongPassword(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

export class BackendAccountError extends Error {
  constructor(readonly code: string, message: string, readonly status?: number) {
    super(message);
    this.name = "BackendAccountError";
  }
}

/**
 * Creates the account of server `name` with a fresh password. `login` is the
 * email's handle (default: the name itself), so that a simulator can create
 * one account per run for the same server name.
 */
export async function createBackendAccount(
  admin: SupabaseClient,
  name: string,
  login: string = name,
): Promise<BackendAccount> {
  const email = await backendEmail(login);
  const password = strongPassword();
  const { data, error } = await admin.auth.admin.createUser({
    email,
    password,
    email_confirm: true,
    app_metadata: { device_backend: name },
  });
  if (error) {
    throw new BackendAccountError(error.code ?? "error", error.message, error.status);
  }
  return { userId: data.user.id, email, password };
}
