/**
 * The demo's data: one user with a few devices, reset to a known state on every
 * `make dev`, a heartbeat timeout short enough to watch a failover, and a fleet
 * incident window short enough to watch an incident end.
 * Dev-only: writes straight to the database as `postgres`.
 */
import postgres from "postgres";

export const DEMO_USER = {
  id: "de000000-0000-4000-8000-000000000001",
  email: "demo@device-qr.local",
};

/** The first three start pairing as soon as the fleet is up; the last waits for "Connect". */
export const DEMO_DEVICES = [
  { id: "de000000-0000-4000-8000-0000000000d1", name: "Sales phone", pairing: true },
  { id: "de000000-0000-4000-8000-0000000000d2", name: "Support phone", pairing: true },
  { id: "de000000-0000-4000-8000-0000000000d3", name: "Billing phone", pairing: true },
  { id: "de000000-0000-4000-8000-0000000000d4", name: "Founder's phone", pairing: false },
] as const;

export interface DemoTimings {
  heartbeatTimeoutSeconds: number;
  incidentWindowSeconds: number;
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
          values (${device.id}, ${DEMO_USER.id}, ${device.name}, 'disconnected')
          on conflict (id) do update set
            user_id = excluded.user_id,
            device_name = excluded.device_name,
            status = 'disconnected',
            qr_code = null, qr_updated_at = null, qr_expires_at = null,
            assigned_server_id = null, assigned_at = null,
            assignment_epoch = public.devices.assignment_epoch + 1,
            connecting_since = null,
            last_reassigned_at = null, reassign_count = 0, last_error = null,
            updated_at = now()`;
      }
      // Reset means unlinked too: a session left from the last run would be resumed.
      await tx`delete from device_assignment.device_sessions
                where device_id = any(${DEMO_DEVICES.map((device) => device.id)}::uuid[])`;
      const [previous] = await tx<PreviousSettings[]>`
        select extract(epoch from heartbeat_timeout)::float8 as "heartbeatTimeoutSeconds",
               extract(epoch from incident_window)::float8 as "incidentWindowSeconds"
        from public.assignment_settings`;
      await tx`
        update public.assignment_settings
        set heartbeat_timeout = make_interval(secs => ${timings.heartbeatTimeoutSeconds}),
            incident_window = make_interval(secs => ${timings.incidentWindowSeconds}),
            updated_at = now()`;
      return previous;
    });
  } finally {
    await sql.end();
  }
}

/**
 * Start pairing the demo's devices, one per server in turn, so that killing
 * any server has something to show. (In production `request_device_reassignment`
 * picks the server; here we want a spread even on a database full of orphans
 * left by test runs, which the first claim would otherwise take along.)
 */
export async function startDemoPairing(dbUrl: string, serverIds: string[]): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    const pairing = DEMO_DEVICES.filter((device) => device.pairing);
    for (const [index, device] of pairing.entries()) {
      await sql`
        update public.devices set
          status = 'connecting',
          assigned_server_id = ${serverIds[index % serverIds.length]},
          assigned_at = now(), connecting_since = now(),
          assignment_epoch = assignment_epoch + 1,
          updated_at = now()
        where id = ${device.id}`;
    }
  } finally {
    await sql.end();
  }
}

/** On exit: leave no demo device connecting, so nothing of the demo stays orphaned. */
export async function parkDemoDevices(dbUrl: string): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    await sql`
      update public.devices set
        status = 'disconnected', assigned_server_id = null, assigned_at = null,
        qr_code = null, qr_updated_at = null, qr_expires_at = null,
        assignment_epoch = assignment_epoch + 1, updated_at = now()
      where id = any(${DEMO_DEVICES.map((device) => device.id)}::uuid[])`;
  } finally {
    await sql.end();
  }
}

export type PreviousSettings = DemoTimings;

export async function restoreSettings(dbUrl: string, previous: PreviousSettings): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    await sql`
      update public.assignment_settings
      set heartbeat_timeout = make_interval(secs => ${previous.heartbeatTimeoutSeconds}),
          incident_window = make_interval(secs => ${previous.incidentWindowSeconds}),
          updated_at = now()`;
  } finally {
    await sql.end();
  }
}
