/**
 * The demo's data: one user with a few devices, reset to a known state on every
 * `make dev`, and a heartbeat timeout short enough to watch a failover.
 * Dev-only: writes straight to the database as `postgres`.
 */
import postgres from "postgres";

export const DEMO_USER = {
  id: "de000000-0000-4000-8000-000000000001",
  email: "demo@device-qr.local",
};

export const DEMO_DEVICES = [
  { id: "de000000-0000-4000-8000-0000000000d1", name: "Sales phone", status: "connecting" },
  { id: "de000000-0000-4000-8000-0000000000d2", name: "Support phone", status: "connecting" },
  { id: "de000000-0000-4000-8000-0000000000d3", name: "Billing phone", status: "connecting" },
  { id: "de000000-0000-4000-8000-0000000000d4", name: "Founder's phone", status: "disconnected" },
] as const;

export interface DemoTimings {
  heartbeatTimeoutSeconds: number;
}

/** Seeds the demo and returns the settings it replaced, for `restoreSettings`. */
export async function seedDemo(dbUrl: string, timings: DemoTimings): Promise<PreviousSettings> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    return await sql.begin(async (tx) => {
      await tx`
        insert into auth.users (id, aud, role, email, email_confirmed_at)
        values (${DEMO_USER.id}, 'authenticated', 'authenticated', ${DEMO_USER.email}, now())
        on conflict (id) do nothing`;
      for (const device of DEMO_DEVICES) {
        await tx`
          insert into public.devices (id, user_id, device_name, status)
          values (${device.id}, ${DEMO_USER.id}, ${device.name}, ${device.status})
          on conflict (id) do update set
            user_id = excluded.user_id,
            device_name = excluded.device_name,
            status = excluded.status,
            qr_code = null, qr_updated_at = null, qr_expires_at = null,
            assigned_server_id = null, assigned_at = null,
            assignment_epoch = public.devices.assignment_epoch + 1,
            connecting_since = case when excluded.status = 'connecting' then now() end,
            last_reassigned_at = null, reassign_count = 0, last_error = null,
            updated_at = now()`;
      }
      const [previous] = await tx<PreviousSettings[]>`
        select extract(epoch from heartbeat_timeout)::float8 as "heartbeatTimeoutSeconds"
        from public.assignment_settings`;
      await tx`
        update public.assignment_settings
        set heartbeat_timeout = make_interval(secs => ${timings.heartbeatTimeoutSeconds}),
            updated_at = now()`;
      return previous;
    });
  } finally {
    await sql.end();
  }
}

export interface PreviousSettings {
  heartbeatTimeoutSeconds: number;
}

export async function restoreSettings(dbUrl: string, previous: PreviousSettings): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    await sql`
      update public.assignment_settings
      set heartbeat_timeout = make_interval(secs => ${previous.heartbeatTimeoutSeconds}),
          updated_at = now()`;
  } finally {
    await sql.end();
  }
}
