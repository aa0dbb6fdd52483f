/**
 * A backend account attacks another server, end to end: real accounts made
 * with Auth's admin API (cli/backend_accounts.ts, as `operator server add`
 * makes them), signed in with supabase-js's own password grant, every call
 * over the Data API. pgTAP (08_least_privilege) proves the guard with claims
 * set by hand; this proves the chain a stolen server credential would use:
 * Auth → token → gateway → claims → guard.
 *
 * Server A's account goes after server B's devices (pairing and linked), its
 * pending phone number, its stored session and its lease; a plain user tries
 * to become B by writing the server's name where users may write. Each attack
 * must be refused with the guard's own answer, and B's rows must be exactly
 * as before. A's own calls succeed, so the refusals are not a broken login.
 */
import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { createBackendAccount } from "../../cli/backend_accounts.ts";
import { closeStack, getStack, serviceClient, sql } from "../e2e/harness.ts";

const CLIENT_OPTIONS = {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
};

async function signIn(email: string, password: string): Promise<SupabaseClient> {
  const stack = await getStack();
  const client = createClient(stack.url, stack.publishableKey, CLIENT_OPTIONS);
  const { error } = await client.auth.signInWithPassword({ email, password });
  if (error) throw error;
  return client;
}

/** The status and the guard's code (PostgREST puts it in `message`) of one RPC. */
async function call(client: SupabaseClient, name: string, args: Record<string, unknown>) {
  const { data, error, status } = await client.rpc(name, args);
  return { status, code: error?.message ?? null, text: JSON.stringify(data ?? error) };
}

Deno.test("server A's backend account cannot act on server B, whatever it calls", async (t) => {
  const db = await sql();
  const tag = `acct-${crypto.randomUUID().slice(0, 8)}`;
  const nameA = `${tag}-a`;
  const nameB = `${tag}-b`;
  const phoneA = `1415${Math.floor(1_000_000 + Math.random() * 8_999_999)}`;
  const phoneB = `4477${Math.floor(1_000_000 + Math.random() * 8_999_999)}`;
  const userIds: string[] = [];
  try {
    // Both servers are full, so neither takes other tests' devices, and
    // leased a day ahead, so no maintenance pass moves B's devices meanwhile.
    const [serverA] = await db`
      insert into public.backend_servers (server_name, is_active, is_healthy, current_load,
                                          max_capacity, last_health_ping)
      values (${nameA}, true, true, 1, 1, now() + interval '1 day') returning id`;
    const [serverB] = await db`
      insert into public.backend_servers (server_name, is_active, is_healthy, current_load,
                                          max_capacity, last_health_ping)
      values (${nameB}, true, true, 2, 2, now() + interval '1 day') returning id`;
    const [victim] = await db`
      insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
                              email_confirmed_at, raw_app_meta_data, raw_user_meta_data)
      values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',
              'authenticated', ${`${tag}-victim@example.test`}, '', now(),
              '{"provider": "email", "providers": ["email"]}', '{}')
      returning id`;
    userIds.push(victim.id);
    // B pairs one device (a number waiting for a code) and holds one linked session.
    const [pairingB] = await db`
      insert into public.devices (user_id, device_name, status, assigned_server_id,
                                  assignment_epoch, assigned_at, connecting_since, qr_code,
                                  qr_updated_at, qr_expires_at)
      values (${victim.id}, 'pairing on B', 'connecting', ${serverB.id}, 3, now(), now(),
              'qr-of-b', now(), now() + interval '1 day')
      returning id`;
    const [linkedB] = await db`
      insert into public.devices (user_id, device_name, status, assigned_server_id,
                                  assignment_epoch, assigned_at)
      values (${victim.id}, 'linked on B', 'connected', ${serverB.id}, 4, now())
      returning id`;
    const [pairingA] = await db`
      insert into public.devices (user_id, device_name, status, assigned_server_id,
                                  assignment_epoch, assigned_at, connecting_since)
      values (${victim.id}, 'pairing on A', 'connecting', ${serverA.id}, 1, now(), now())
      returning id`;
    await db`
      insert into device_assignment.pairing_requests (device_id, phone, expires_at)
      values (${pairingB.id}, ${phoneB}, now() + interval '10 minutes'),
             (${pairingA.id}, ${phoneA}, now() + interval '10 minutes')`;
    await db`
      insert into device_assignment.device_sessions (device_id, type, id, value)
      values (${linkedB.id}, 'creds', 'creds', 'b-secret-session')`;

    const admin = await serviceClient();
    const accountA = await createBackendAccount(admin, nameA, `${tag}-login-a`);
    userIds.push(accountA.userId);
    const a = await signIn(accountA.email, accountA.password);

    const bState = async () => {
      const [row] = await db`
        select md5(concat_ws('#',
          (select string_agg(d::text, '|' order by d.id) from public.devices d
            where d.id in (${pairingB.id}, ${linkedB.id})),
          (select s::text from public.backend_servers s where s.id = ${serverB.id}),
          (select string_agg(r::text, '|') from device_assignment.pairing_requests r
            where r.device_id = ${pairingB.id}),
          (select string_agg(x::text, '|') from device_assignment.device_sessions x
            where x.device_id = ${linkedB.id}),
          (select count(*)::text from public.device_assignment_events e
            where e.device_id in (${pairingB.id}, ${linkedB.id})))) as sum`;
      return row.sum as string;
    };
    const before = await bState();
    const soon = new Date(Date.now() + 60_000).toISOString();

    await t.step("A's own calls work: the account is valid", async () => {
      const beat = await call(a, "server_heartbeat", {
        p_server_name: nameA,
        p_current_load: 1,
        p_max_capacity: 1,
      });
      assert.equal(beat.status, 200, beat.text);
    });

    await t.step("as B: heartbeat, claim, publish, report, store, shutdown are 403", async () => {
      const asB: [string, Record<string, unknown>][] = [
        ["server_heartbeat", { p_server_name: nameB, p_current_load: 0, p_max_capacity: null }],
        ["claim_devices", { p_server_id: serverB.id, p_limit: 10 }],
        ["publish_device_qr", {
          p_device_id: pairingB.id,
          p_server_id: serverB.id,
          p_epoch: 3,
          p_qr: "evil-qr",
          p_expires_at: soon,
        }],
        ["publish_device_pairing_code", {
          p_device_id: pairingB.id,
          p_server_id: serverB.id,
          p_epoch: 3,
          p_code: "EVIL-CODE",
          p_expires_at: soon,
        }],
        ["report_device_status", {
          p_device_id: linkedB.id,
          p_server_id: serverB.id,
          p_epoch: 4,
          p_status: "logged_out",
          p_error: null,
        }],
        ["device_session_read", {
          p_device_id: linkedB.id,
          p_server_id: serverB.id,
          p_epoch: 4,
          p_type: "creds",
          p_ids: null,
        }],
        ["device_session_write", {
          p_device_id: linkedB.id,
          p_server_id: serverB.id,
          p_epoch: 4,
          p_entries: [{ type: "creds", id: "creds", value: "evil" }],
        }],
        ["server_shutdown", { p_server_id: serverB.id }],
      ];
      for (const [name, args] of asB) {
        const answer = await call(a, name, args);
        assert.deepEqual(
          [answer.status, answer.code],
          [403, "forbidden"],
          `${name}: ${answer.text}`,
        );
      }
    });

    await t.step("as itself on B's devices: fenced, never served", async () => {
      const asA: [string, Record<string, unknown>][] = [
        ["publish_device_qr", {
          p_device_id: pairingB.id,
          p_server_id: serverA.id,
          p_epoch: 3,
          p_qr: "evil-qr",
          p_expires_at: soon,
        }],
        ["publish_device_pairing_code", {
          p_device_id: pairingB.id,
          p_server_id: serverA.id,
          p_epoch: 3,
          p_code: "EVIL-CODE",
          p_expires_at: soon,
        }],
        ["device_session_read", {
          p_device_id: linkedB.id,
          p_server_id: serverA.id,
          p_epoch: 4,
          p_type: "creds",
          p_ids: null,
        }],
        ["report_device_status", {
          p_device_id: linkedB.id,
          p_server_id: serverA.id,
          p_epoch: 4,
          p_status: "logged_out",
          p_error: null,
        }],
      ];
      for (const [name, args] of asA) {
        const answer = await call(a, name, args);
        assert.deepEqual([answer.status, answer.code], [409, "fenced"], `${name}: ${answer.text}`);
        assert.ok(!answer.text.includes("b-secret-session"), `${name} leaked B's session`);
      }
    });

    await t.step("A's claim names its own pending number, never B's", async () => {
      const answer = await call(a, "claim_devices", { p_server_id: serverA.id, p_limit: 100 });
      assert.equal(answer.status, 200, answer.text);
      const rows = JSON.parse(answer.text) as { device_id: string; pairing_phone: string | null }[];
      assert.deepEqual(rows.map((r) => [r.device_id, r.pairing_phone]), [[pairingA.id, phoneA]]);
      assert.ok(!answer.text.includes(phoneB), "B's pending number reached A");
    });

    await t.step("as a user, A sees none of B's devices", async () => {
      const answer = await call(a, "get_device_qr", { p_device_id: pairingB.id });
      assert.deepEqual([answer.status, answer.code], [404, "not_found"], answer.text);
    });

    await t.step(
      "a user who writes B's name into their own metadata is no backend account",
      async () => {
        const stack = await getStack();
        const email = `${tag}-forger@example.test`;
        const password = `pw-${crypto.randomUUID()}`;
        const { data: created, error } = await admin.auth.admin.createUser({
          email,
          password,
          email_confirm: true,
        });
        if (error) throw error;
        userIds.push(created.user.id);
        const forger = await signIn(email, password);
        const { data: session } = await forger.auth.getSession();
        // What a user may send to Auth about themselves; app_metadata is the operator's.
        const update = await fetch(`${stack.url}/auth/v1/user`, {
          method: "PUT",
          headers: {
            apikey: stack.publishableKey,
            authorization: `Bearer ${session.session!.access_token}`,
            "content-type": "application/json",
          },
          body: JSON.stringify({
            data: { device_backend: nameB },
            app_metadata: { device_backend: nameB },
          }),
        });
        await update.body?.cancel();
        assert.ok(update.status >= 400, `Auth took a user's app_metadata: ${update.status}`);
        // A fresh session carries whatever Auth now holds for the user.
        const again = await signIn(email, password);
        const { data: fresh } = await again.auth.getSession();
        assert.equal(fresh.session!.user.app_metadata.device_backend, undefined);
        const beat = await call(again, "server_heartbeat", {
          p_server_name: nameB,
          p_current_load: 0,
          p_max_capacity: null,
        });
        assert.deepEqual([beat.status, beat.code], [403, "forbidden"], beat.text);
      },
    );

    await t.step("B's devices, number, session and lease are as they were", async () => {
      assert.equal(await bState(), before);
    });

    await t.step("once disabled, A cannot heartbeat itself back nor claim", async () => {
      // A's own device leaves first, so the disable moves nothing onto other tests' servers.
      await db`delete from public.devices where id = ${pairingA.id}`;
      const { error } = await admin.rpc("set_backend_server_enabled", {
        p_server_name: nameA,
        p_enabled: false,
      });
      if (error) throw error;
      const beat = await call(a, "server_heartbeat", {
        p_server_name: nameA,
        p_current_load: 0,
        p_max_capacity: 1,
      });
      assert.deepEqual([beat.status, beat.code], [403, "server_disabled"], beat.text);
      const claim = await call(a, "claim_devices", { p_server_id: serverA.id, p_limit: 1 });
      assert.deepEqual([claim.status, claim.code], [409, "server_not_live"], claim.text);
    });
  } finally {
    await db`delete from auth.users where id = any(${userIds}::uuid[])`;
    await db`delete from public.backend_servers where server_name in (${nameA}, ${nameB})`;
    await closeStack();
  }
});
