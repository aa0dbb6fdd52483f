-- Least privilege (issue 13, database half):
--
--   * backend accounts: a backend server signs in as its own Supabase Auth
--     user whose app_metadata.device_backend is its server name, and the whole
--     server API lets it act only as that server (device_assignment.caller and
--     authorize_server decide, once). The secret key (service_role) stays the
--     operator credential and may still drive the server API;
--   * backend_servers.is_enabled and set_backend_server_enabled: an operator
--     keeps a server out, and a disabled server cannot heartbeat itself back;
--   * the audit trail is append-only for every role (only the retention purge
--     deletes) and records the caller behind each change;
--   * per-user bounds inside the one RPC a request makes: at most
--     long_polls_per_user concurrent long-polls, and user_reassign_budget
--     reassignments per device per user_reassign_window;
--   * users see a stable last_error_code instead of the server's text.
--
-- Replaces functions of earlier migrations (each names the one whose body it
-- keeps); get_device_qr gains an argument, so it is dropped and created.

-- Columns and settings (each a no-op on a database that has them) ---------------------

alter table public.backend_servers add column if not exists is_enabled boolean not null default true;
comment on column public.backend_servers.is_enabled is
  'False: an operator disabled the server (set_backend_server_enabled); it is never live.';

-- Nullable: rows written before this migration do not know their caller.
alter table public.device_assignment_events add column if not exists caller text;
comment on column public.device_assignment_events.caller is
  'The credential behind the change: server:<name> (a backend account), operator (the secret key), '
  'user:<uuid>, or system (pg_cron, a database session). actor says on whose behalf.';

alter table public.assignment_settings
  add column if not exists long_polls_per_user integer not null default 5
    check (long_polls_per_user > 0),
  add column if not exists user_reassign_budget integer not null default 10
    check (user_reassign_budget > 0),
  add column if not exists user_reassign_window interval not null default '1 hour'
    check (user_reassign_window > interval '0');

-- Who is calling -------------------------------------------------------------------------
-- The one decision of who the caller is, from the request's JWT claims (what
-- PostgREST sets; auth.jwt() reads them):
--   server:<name>  role authenticated with app_metadata.device_backend = <name>:
--                  a backend account (app_metadata is set only with the secret
--                  key; a user cannot change their own);
--   operator       role service_role: the project's secret key;
--   user:<uuid>    any other signed-in user;
--   anon           a request without a user;
--   system         no claims at all: a database session (pg_cron, psql, a
--                  migration), which only the database's own roles open.
create or replace function device_assignment.caller()
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_claims jsonb := auth.jwt();
  v_backend jsonb := v_claims #> '{app_metadata,device_backend}';
begin
  if v_claims is null or v_claims = '{}'::jsonb then
    return 'system';
  end if;
  if v_claims ->> 'role' = 'service_role' then
    return 'operator';
  end if;
  if v_claims ->> 'role' = 'authenticated' and jsonb_typeof(v_backend) = 'string'
     and length(v_backend #>> '{}') between 1 and 200 then
    return 'server:' || (v_backend #>> '{}');
  end if;
  if v_claims ->> 'role' = 'authenticated' and v_claims ->> 'sub' is not null then
    return 'user:' || (v_claims ->> 'sub');
  end if;
  return 'anon';
end;
$$;

-- The guard of the whole server API. A backend account acts only as its own
-- server: the server named p_server_name (heartbeat) or the row p_server_id
-- (every other call) must be the one in its claims, else `forbidden`; the
-- operator and database sessions may act as any server. Then a disabled
-- server is refused: its heartbeat with `server_disabled`, anything else with
-- `server_not_live` (on which a worker drops every device).
create or replace function device_assignment.authorize_server(
  p_server_id uuid,
  p_server_name text default null
)
returns void
language plpgsql
stable
set search_path = ''
set jit = off
as $$
declare
  v_caller text := device_assignment.caller();
  v_server public.backend_servers;
begin
  if p_server_name is not null then
    select s.* into v_server from public.backend_servers s where s.server_name = p_server_name;
  else
    select s.* into v_server from public.backend_servers s where s.id = p_server_id;
  end if;

  if v_caller not in ('operator', 'system')
     and v_caller is distinct from 'server:' || coalesce(p_server_name, v_server.server_name) then
    perform device_assignment.raise_api_error('forbidden', 403, null,
      'The server API takes a backend account (app_metadata.device_backend = its server name) '
      || 'acting as its own server, or the secret key.');
  end if;

  if not coalesce(v_server.is_enabled, true) then
    if p_server_name is not null then
      perform device_assignment.server_disabled_error();
    end if;
    perform device_assignment.raise_api_error('server_not_live', 409,
      jsonb_build_object('server_disabled', true),
      'An operator disabled this server: drop every device.');
  end if;
end;
$$;

create or replace function device_assignment.server_disabled_error()
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform device_assignment.raise_api_error('server_disabled', 403, null,
    'An operator disabled this server; it stays out of the pool until set_backend_server_enabled '
    || 'enables it again.');
end;
$$;

-- A server is live when it is enabled, active, healthy, and heartbeated within
-- the timeout (20261128190100_assignment_rules.sql, plus the enabled flag, so
-- no assignment rule ever picks a disabled server).
create or replace view device_assignment.live_servers as
select s.*
from public.backend_servers s
cross join public.assignment_settings cfg
where s.is_active
  and s.is_healthy
  and s.is_enabled
  and s.last_health_ping > now() - cfg.heartbeat_timeout;

-- The audit trail is append-only -------------------------------------------------------
-- No API role may write it (the one writer is security definer) or change
-- it; service_role keeps reading it. The trigger holds for the table's owner
-- too, so no function of the bundle can rewrite history by mistake: only the
-- retention purge, which marks its transaction, deletes rows.
revoke all on public.device_assignment_events from public, anon, authenticated, service_role;
grant select on public.device_assignment_events to service_role;

create or replace function device_assignment.refuse_audit_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' and current_setting('device_assignment.audit_purge', true) = 'on' then
    return old;
  end if;
  -- Raised here rather than through raise_api_error: a trigger runs as the
  -- role that fired it, which may not execute the bundle's internals.
  raise exception using
    message = 'audit_append_only',
    errcode = 'PT403',
    hint = 'device_assignment_events is append-only; rows leave only through purge_history.';
end;
$$;

drop trigger if exists device_assignment_events_append_only on public.device_assignment_events;
create trigger device_assignment_events_append_only
  before update or delete on public.device_assignment_events
  for each row execute function device_assignment.refuse_audit_change();

-- The one writer (20261201130000_session_store.sql), now recording who called:
-- the credential behind the change, whatever path the change took.
create or replace function device_assignment.move_devices(
  p_device_ids uuid[],
  p_to_server_ids uuid[],
  p_reason text,
  p_actor text,
  p_status text default null,
  p_error text default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint, status text)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_spends boolean := p_reason not in ('claimed', 'session_failover');
  v_moved_ids uuid[];
  v_from uuid[];
  v_to uuid[];
  v_epochs bigint[];
  v_status text[];
  v_live_from uuid[];
begin
  if coalesce(cardinality(p_device_ids), 0) = 0 then
    return;
  end if;

  with plan as (
    select m.device_id, m.to_server_id, d.assigned_server_id as from_server_id,
           case
             when p_status is not null then p_status
             when p_reason = 'session_failover' then
               case when exists (select from device_assignment.device_sessions s
                                  where s.device_id = d.id and s.type = 'creds')
                    then 'reconnecting' else 'connecting' end
             else d.status
           end as new_status,
           d.status as old_status
    from unnest(p_device_ids, p_to_server_ids) as m(device_id, to_server_id)
    join public.devices d on d.id = m.device_id
  ),
  moved as (
    update public.devices d
       set assigned_server_id = p.to_server_id,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = case when p.to_server_id is null then null else now() end,
           last_reassigned_at = case when v_spends and p.to_server_id is not null then now()
                                     else d.last_reassigned_at end,
           reassign_count = case
                              when p.new_status = 'connecting' and p.old_status <> 'connecting' then 0
                              when v_spends and p.to_server_id is not null then d.reassign_count + 1
                              else d.reassign_count
                            end,
           status = p.new_status,
           connecting_since = case
                                when p.new_status in ('connecting', 'reconnecting')
                                     and p.old_status is distinct from p.new_status then now()
                                else d.connecting_since
                              end,
           last_error = case when p_status is not null then p_error else d.last_error end,
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from plan p
     where d.id = p.device_id
    returning d.id, p.from_server_id, p.to_server_id, d.assignment_epoch, d.status
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor, caller)
    select m.id, m.from_server_id, m.to_server_id, m.assignment_epoch, p_reason, p_actor,
           device_assignment.caller()
    from moved m
  )
  select array_agg(m.id), array_agg(m.from_server_id), array_agg(m.to_server_id),
         array_agg(m.assignment_epoch), array_agg(m.status)
    into v_moved_ids, v_from, v_to, v_epochs, v_status
  from moved m;

  if v_moved_ids is null then
    return;
  end if;

  -- Only live leaving servers: see above.
  select array_agg(f.id) into v_live_from
  from unnest(v_from) f(id)
  where exists (select from device_assignment.live_servers l where l.id = f.id);

  -- Server rows are locked in id order before their load changes, so two
  -- transactions moving devices between the same servers never deadlock.
  -- NO KEY UPDATE, like the load update itself, does not conflict with the
  -- KEY SHARE locks that the devices foreign key took above.
  perform from public.backend_servers s
   where s.id = any(v_live_from) or s.id = any(v_to)
   order by s.id
   for no key update;

  update public.backend_servers s
     set current_load = greatest(coalesce(s.current_load, 0) + c.delta, 0)
    from (
      select server_id, sum(delta)::integer as delta
      from (
        select unnest(v_to) as server_id, 1 as delta
        union all
        select unnest(v_live_from), -1
      ) changes
      where server_id is not null
      group by server_id
    ) c
   where s.id = c.server_id and c.delta <> 0;

  return query
    select * from unnest(v_moved_ids, v_from, v_to, v_epochs, v_status);
end;
$$;

-- Operators keep a server out --------------------------------------------------------------
-- Creates the row when missing, so a name can be disabled before its server
-- ever starts. Disabling takes effect on the server's next call (see
-- authorize_server) and heals its devices now, as from a dead server:
-- connecting ones go to live servers (or the claim queue), linked ones fail
-- over. A device another transaction holds right now is skipped, like every
-- move; it is on a server that is not live, so the next heal takes it.
-- Enabling lets the server's next heartbeat make it live again.
create or replace function device_assignment.set_backend_server_enabled(
  p_server_name text,
  p_enabled boolean
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_server public.backend_servers;
  v_connecting uuid[];
  v_linked uuid[];
  v_moved integer := 0;
begin
  if device_assignment.caller() not in ('operator', 'system') then
    perform device_assignment.raise_api_error('forbidden', 403, null,
      'Only an operator (the secret key) enables or disables servers.');
  end if;
  if p_server_name is null or length(btrim(p_server_name)) = 0 or length(p_server_name) > 200 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_server_name'), 'A server name of 1 to 200 characters.');
  end if;
  if p_enabled is null then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_enabled'), 'true or false.');
  end if;

  insert into public.backend_servers as s (server_name, is_enabled, is_active, current_load)
  values (p_server_name, p_enabled, false, 0)
  on conflict (server_name) do update
    set is_enabled = excluded.is_enabled,
        is_active = s.is_active and excluded.is_enabled,
        updated_at = now()
  returning s.* into v_server;

  if not p_enabled then
    select array_agg(d.id) filter (where d.status = 'connecting'),
           array_agg(d.id) filter (where d.status <> 'connecting')
      into v_connecting, v_linked
    from public.devices d
    where d.assigned_server_id = v_server.id
      and d.status in ('connecting', 'connected', 'reconnecting');

    select count(*)::integer into v_moved
    from (
      select a.device_id from device_assignment.assign_devices(
        v_connecting, 'server_inactive', 'operator', false, false, v_server.id) a
      union all
      select a.device_id from device_assignment.assign_devices(
        v_linked, 'session_failover', 'operator', false, false, v_server.id) a
    ) m;
  end if;

  return jsonb_build_object(
    'server', v_server.server_name,
    'server_id', v_server.id,
    'enabled', v_server.is_enabled,
    'devices_moved', v_moved
  );
end;
$$;

-- The server API, guarded (bodies as in 20261201130000_session_store.sql) ------------------
-- server_heartbeat, claim_devices and server_shutdown call the guard first;
-- publish_device_qr, report_device_status and the session store reach it
-- through fenced_device, their first step after checking their arguments.

-- A disabled server's heartbeat is refused and never makes it live again.
create or replace function device_assignment.server_heartbeat(
  p_server_name text,
  p_current_load integer,
  p_max_capacity integer,
  p_metadata jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_server public.backend_servers;
  v_timeout interval;
begin
  perform device_assignment.authorize_server(null, p_server_name);
  if p_server_name is null or length(btrim(p_server_name)) = 0 or length(p_server_name) > 200 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_server_name'), 'A server name of 1 to 200 characters.');
  end if;
  if p_current_load is null or p_current_load < 0 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_current_load'), 'A load of 0 or more.');
  end if;
  if p_max_capacity is not null and p_max_capacity <= 0 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_max_capacity'), 'A positive capacity, or null for unlimited.');
  end if;
  if p_metadata is not null and jsonb_typeof(p_metadata) <> 'object' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_metadata'), 'A JSON object.');
  end if;

  insert into public.backend_servers as s
    (server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping, metadata)
  values
    (p_server_name, true, true, p_current_load, p_max_capacity, now(), coalesce(p_metadata, '{}'))
  on conflict (server_name) do update
    set is_active = true,
        is_healthy = true,
        current_load = greatest(excluded.current_load, (
          select count(*)::integer from public.devices d
          where d.assigned_server_id = s.id and d.status in ('connecting', 'reconnecting'))),
        max_capacity = excluded.max_capacity,
        last_health_ping = excluded.last_health_ping,
        metadata = excluded.metadata,
        updated_at = now()
      -- Re-checked under the row lock: a disable committed since the guard read wins.
      where s.is_enabled
  returning s.* into v_server;
  if not found then
    perform device_assignment.server_disabled_error();
  end if;

  select cfg.heartbeat_timeout into v_timeout from public.assignment_settings cfg;

  return jsonb_build_object(
    'server_id', v_server.id,
    'server_name', v_server.server_name,
    'heartbeat_timeout_ms', device_assignment.interval_ms(v_timeout),
    'connecting_grace_ms', (select device_assignment.interval_ms(cfg.connecting_grace)
                              from public.assignment_settings cfg),
    'lease_expires_at', v_server.last_health_ping + v_timeout
  );
end;
$$;


create or replace function device_assignment.claim_devices(p_server_id uuid, p_limit integer)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean
)
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_server device_assignment.live_servers;
  v_owned integer;
  v_room integer;
  v_locked uuid[];
  v_ids uuid[];
  v_actor text;
begin
  perform device_assignment.authorize_server(p_server_id);
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_limit'), 'A limit from 1 to 10000.');
  end if;
  select l.* into v_server from device_assignment.live_servers l where l.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('server_not_live', 409, null,
      'Call server_heartbeat first; a server whose lease lapsed may not claim devices.');
  end if;
  v_actor := 'server:' || v_server.server_name;

  -- Sessions to resume first: their users are offline until they are.
  return query
    select * from (
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false
      from public.devices d
      where d.status = 'reconnecting' and d.assigned_server_id = p_server_id
      order by d.connecting_since nulls first, d.id
      limit p_limit
    ) r
    union all
    select * from (
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false
      from public.devices d
      where d.status = 'connecting' and d.assigned_server_id = p_server_id
      order by d.connecting_since nulls first, d.id
      limit p_limit
    ) c
    limit p_limit;
  get diagnostics v_owned = row_count;

  v_room := p_limit - v_owned;
  if v_server.max_capacity is not null then
    v_room := least(v_room, v_server.max_capacity - coalesce(v_server.current_load, 0));
  end if;
  if v_room <= 0 then
    return;
  end if;

  -- Two claimers never take the same device: lock candidates, skipping rows
  -- another claimer holds, then decide in a new statement, whose fresh snapshot
  -- sees every claim committed meanwhile. (Deciding in the locking statement is
  -- not enough: its re-check of a locked row cannot see through the anti-join
  -- that defines "orphaned".) First the claim queue, then sessions nobody
  -- holds, then connecting devices of servers that are not live; each reads
  -- about as many index entries as it takes, and a claim the queue fills
  -- reads no server (maintenance and get_device_qr hand sessions over too).
  select array_agg(t.id) into v_locked
  from (
    select d.id
    from public.devices d
    where d.status = 'connecting' and d.assigned_server_id is null
    order by d.connecting_since nulls first, d.id
    limit v_room
    for update of d skip locked
  ) t;

  if coalesce(cardinality(v_locked), 0) < v_room then
    select coalesce(v_locked, '{}') || array_agg(t.id) into v_locked
    from (
      select d.id
      from public.devices d
      where d.id = any(array(select device_assignment.session_to_fail_over_ids()))
      order by d.connecting_since nulls first, d.id
      limit v_room - coalesce(cardinality(v_locked), 0)
      for update of d skip locked
    ) t;
  end if;

  if coalesce(cardinality(v_locked), 0) < v_room then
    select coalesce(v_locked, '{}') || array_agg(t.id) into v_locked
    from (
      select d.id
      from public.devices d
      where d.id = any(array(select device_assignment.connecting_on_non_live_servers()))
      order by d.connecting_since nulls first, d.id
      limit v_room - coalesce(cardinality(v_locked), 0)
      for update of d skip locked
    ) t;
  end if;
  if coalesce(cardinality(v_locked), 0) = 0 then
    return;
  end if;

  select array_agg(f.id) into v_ids
  from device_assignment.sessions_to_fail_over f where f.id = any(v_locked);
  return query
    select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true
    from device_assignment.move_devices(
      v_ids, array_fill(p_server_id, array[coalesce(cardinality(v_ids), 0)]), 'session_failover', v_actor) m
    join public.devices d on d.id = m.device_id;

  select array_agg(o.id) into v_ids
  from device_assignment.orphaned_devices o where o.id = any(v_locked);
  return query
    select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true
    from device_assignment.move_devices(
      v_ids, array_fill(p_server_id, array[coalesce(cardinality(v_ids), 0)]), 'claimed', v_actor) m
    join public.devices d on d.id = m.device_id;
end;
$$;


create or replace function device_assignment.server_shutdown(p_server_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_name text;
  v_connecting uuid[];
  v_linked uuid[];
  v_reassigned integer;
  v_failed_over integer;
begin
  perform device_assignment.authorize_server(p_server_id);
  select s.server_name into v_name from public.backend_servers s where s.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  -- Move the devices first, never to this server, and only then mark it
  -- inactive: its row is then locked in the same id order as every other
  -- transaction's (see move_devices), so concurrent drains cannot deadlock.
  select array_agg(d.id) filter (where d.status = 'connecting'),
         array_agg(d.id) filter (where d.status <> 'connecting')
    into v_connecting, v_linked
  from public.devices d
  where d.assigned_server_id = p_server_id
    and d.status in ('connecting', 'connected', 'reconnecting');

  select count(*) filter (where a.to_server_id is not null) into v_reassigned
  from device_assignment.assign_devices(
    v_connecting, 'server_shutdown', 'server:' || v_name, false, false, p_server_id) a;

  select count(*) into v_failed_over
  from device_assignment.assign_devices(
    v_linked, 'session_failover', 'server:' || v_name, false, false, p_server_id) a;

  update public.backend_servers s
     set is_active = false, updated_at = now()
   where s.id = p_server_id;

  return jsonb_build_object(
    'server_id', p_server_id,
    'released', coalesce(cardinality(v_connecting), 0),
    'reassigned', v_reassigned,
    'sessions_handed_over', v_failed_over
  );
end;
$$;


-- Locks the device and checks that the caller is its current owner at the
-- current epoch (20261128190300_server_api.sql), after checking that the
-- caller may act as that server at all.
create or replace function device_assignment.fenced_device(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint
)
returns public.devices
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_device public.devices;
begin
  perform device_assignment.authorize_server(p_server_id);
  select d.* into v_device from public.devices d where d.id = p_device_id for update;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;
  if v_device.assigned_server_id is distinct from p_server_id
     or v_device.assignment_epoch is distinct from p_epoch then
    perform device_assignment.raise_api_error('fenced', 409,
      jsonb_build_object('device_id', p_device_id),
      'This server no longer owns the device at this epoch: close its socket.');
  end if;
  return v_device;
end;
$$;


-- What users are told about errors --------------------------------------------------------
-- The one mapping from a device's stored error (the server's own text, up to
-- 1,000 characters, for operators: assignment_health) to the code users get.
create or replace function device_assignment.error_code(p_status text, p_last_error text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case
    when p_last_error is null then null
    when p_last_error = 'logged_out' then 'logged_out'
    when p_last_error like 'max_reassignments_exceeded%' then 'max_reassignments_exceeded'
    when p_status = 'qr_timeout' then 'qr_timeout'
    when p_status = 'disconnected' then 'disconnected'
    else 'server_error'
  end;
end;
$$;

-- Concurrent long-polls per user ------------------------------------------------------------
-- Each re-check of a long-poll holds a lease named by the poll's id, and the
-- function ends it (end_long_poll) when the poll answers. A poll re-checks at
-- least every 2 s (get-device-qr/long-poll.ts, MAX_DELAY_MS), so a lease
-- lasts 5 s from its poll's last check: a live poll keeps its slot, and one
-- whose function died without ending it frees it within seconds. (A lease as
-- long as the longest wait, 25 s, or one left to expire, would make a client
-- that re-polls as soon as an answer arrives, as a QR page does, run into the
-- leases of its own ended polls.)
-- No grant: only get_device_qr and end_long_poll read and write it.
create table if not exists device_assignment.long_poll_leases (
  user_id uuid not null,
  wait_id uuid not null,
  expires_at timestamptz not null,
  primary key (user_id, wait_id)
);
alter table device_assignment.long_poll_leases enable row level security;
revoke all on device_assignment.long_poll_leases from public, anon, authenticated, service_role;

create or replace function device_assignment.hold_long_poll(p_user_id uuid, p_wait_id uuid)
returns void
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_limit integer;
  v_held integer;
  v_next_free timestamptz;
begin
  -- One user's leases are counted and taken one transaction at a time, so two
  -- polls that start together cannot both take the last slot.
  perform pg_advisory_xact_lock(hashtextextended('device_assignment.long_poll:' || p_user_id::text, 0));
  delete from device_assignment.long_poll_leases l
   where l.user_id = p_user_id and l.expires_at <= now();
  insert into device_assignment.long_poll_leases as l (user_id, wait_id, expires_at)
  values (p_user_id, p_wait_id, now() + interval '5 seconds')
  on conflict (user_id, wait_id) do update set expires_at = excluded.expires_at;

  select cfg.long_polls_per_user into v_limit from public.assignment_settings cfg;
  select count(*)::integer, min(l.expires_at) filter (where l.wait_id <> p_wait_id)
    into v_held, v_next_free
  from device_assignment.long_poll_leases l
  where l.user_id = p_user_id;
  if v_held > v_limit then
    perform device_assignment.raise_api_error('too_many_long_polls', 429,
      jsonb_build_object(
        'retry_after_ms', greatest(device_assignment.interval_ms(v_next_free - now()), 1000),
        'limit', v_limit),
      'Wait for one of your long-polls to end before starting another.');
  end if;
end;
$$;

-- Ends one of the caller's long-polls: its slot is free at once.
create or replace function device_assignment.end_long_poll(p_wait_id uuid)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  -- A variable, not the call in the WHERE clause: the planner pre-evaluates a
  -- stable call compared to an indexed column, which raised `unauthorized`
  -- while merely planning (supabase db lint's plpgsql_check).
  v_uid uuid := device_assignment.current_user_id();
begin
  delete from device_assignment.long_poll_leases l
   where l.user_id = v_uid and l.wait_id = p_wait_id;
end;
$$;

-- The QR state (20261201130000_session_store.sql), with the error as a code.
create or replace function device_assignment.qr_state(
  p_device public.devices,
  p_reason text,
  p_reassigned boolean
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_status text;
  v_server jsonb;
begin
  v_status := case
    when p_device.status = 'connected'
         and exists (select from device_assignment.live_servers l
                      where l.id = p_device.assigned_server_id) then 'connected'
    when p_device.status in ('connected', 'reconnecting') then 'reconnecting'
    when p_device.status = 'connecting' and device_assignment.is_qr_fresh(p_device.qr_expires_at)
      then 'ready'
    when p_device.status = 'connecting' then 'pending'
    when p_device.status = 'qr_timeout' then 'qr_timeout'
    when p_device.status = 'error' then 'error'
    else 'not_connecting'
  end;
  if p_device.assigned_server_id is not null then
    select jsonb_build_object('id', s.id, 'name', s.server_name) into v_server
    from public.backend_servers s where s.id = p_device.assigned_server_id;
  end if;

  return jsonb_build_object(
    'device_id', p_device.id,
    'status', v_status,
    'device_status', p_device.status,
    'qr', case when v_status = 'ready' then jsonb_build_object(
            'value', p_device.qr_code,
            'updated_at', p_device.qr_updated_at,
            'expires_at', p_device.qr_expires_at) end,
    'server', v_server,
    'reason', case
                when v_status in ('pending', 'reconnecting') then coalesce(p_reason, 'waiting_for_server')
                when v_status = 'not_connecting' then 'call_reassign_device'
              end,
    'reassigned', p_reassigned,
    'retry_after_ms', case
                        when v_status = 'ready' then 2000
                        when v_status in ('pending', 'reconnecting') and p_reason = 'no_active_servers'
                          then 5000
                        when v_status = 'pending' and p_reason = 'reassignment_cooldown' then
                          greatest(device_assignment.interval_ms(
                            device_assignment.cooldown_remaining(p_device.last_reassigned_at)), 1000)
                        when v_status in ('pending', 'reconnecting') then 1000
                      end,
    'epoch', p_device.assignment_epoch,
    'last_error_code', device_assignment.error_code(p_device.status, p_device.last_error)
  );
end;
$$;


-- get_device_qr (20261201130000_session_store.sql) with p_wait_id: each
-- re-check of a long-poll passes its poll's id and holds a lease.
drop function if exists public.get_device_qr(uuid);
drop function if exists device_assignment.get_device_qr(uuid);
create or replace function device_assignment.get_device_qr(p_device_id uuid, p_wait_id uuid default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_uid uuid := device_assignment.current_user_id();
  v_device public.devices;
  v_action text;
  v_reason text;
begin
  if p_wait_id is not null then
    perform device_assignment.hold_long_poll(v_uid, p_wait_id);
  end if;

  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  if (v_device.status = 'connecting' and not device_assignment.is_qr_fresh(v_device.qr_expires_at))
     or (v_device.status in ('connected', 'reconnecting')
         and exists (select from device_assignment.sessions_to_fail_over f where f.id = p_device_id)) then
    select h.action into v_action
    from device_assignment.heal_devices(array[p_device_id], 'user:' || v_uid) h;

    select d.* into v_device from public.devices d where d.id = p_device_id;

    v_reason := case
      when v_action = 'reassigned_orphan' then 'reassigned_from_inactive_server'
      when v_action = 'reassigned_stale' then 'reassigned_stale'
      when v_action = 'session_failover' and v_device.status = 'reconnecting' then 'session_failover'
      when v_action = 'session_failover' then 'no_stored_session'
      when v_device.status not in ('connecting', 'reconnecting') then null
      when not exists (select from device_assignment.live_servers) then 'no_active_servers'
      when v_device.status = 'reconnecting' then
        case when v_device.assigned_server_id is null then 'no_server_with_capacity'
             else 'resuming_session' end
      when exists (select from device_assignment.orphaned_devices o where o.id = p_device_id)
           or exists (select from device_assignment.stale_devices s where s.id = p_device_id) then
        case
          when device_assignment.cooldown_remaining(v_device.last_reassigned_at) > interval '0'
            then 'reassignment_cooldown'
          when v_device.assigned_server_id is null then 'waiting_for_server'
          else 'no_server_with_capacity'
        end
      else 'waiting_for_server'
    end;
  elsif v_device.status = 'reconnecting' then
    v_reason := 'resuming_session';
  end if;

  return device_assignment.qr_state(
    v_device, v_reason,
    coalesce(v_action in ('reassigned_orphan', 'reassigned_stale', 'session_failover'), false));
end;
$$;


-- request_device_reassignment (20261128190200_user_api.sql) within a budget.
create or replace function device_assignment.request_device_reassignment(p_device_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_uid uuid := device_assignment.current_user_id();
  v_device public.devices;
  v_budget integer;
  v_window interval;
  v_used integer;
  v_oldest timestamptz;
begin
  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid
  for update;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  -- Counted from the audit trail, which asking again cannot reset (unlike
  -- reassign_count, which every new pairing attempt starts from zero).
  select cfg.user_reassign_budget, cfg.user_reassign_window into v_budget, v_window
  from public.assignment_settings cfg;
  select count(*)::integer, min(e.created_at) into v_used, v_oldest
  from public.device_assignment_events e
  where e.device_id = p_device_id and e.reason = 'user_request'
    and e.created_at > now() - v_window;
  if v_used >= v_budget then
    perform device_assignment.raise_api_error('reassignment_budget_exhausted', 429,
      jsonb_build_object(
        'retry_after_ms', greatest(device_assignment.interval_ms(v_oldest + v_window - now()), 1000),
        'budget', v_budget,
        'window_ms', device_assignment.interval_ms(v_window)),
      'This device was reassigned at your request as often as allowed; retry after Retry-After.');
  end if;
  return device_assignment.restart_pairing(v_device, 'user_request', 'user:' || v_uid, true);
end;
$$;


-- assignment_health (20261128190400_operator_api.sql), plus each server's
-- enabled flag and the devices' error text.
create or replace function device_assignment.assignment_health()
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_cron jsonb := '[]'::jsonb;
begin
  -- pg_cron may be missing (a database other than cron.database_name); its
  -- tables are read dynamically so this function exists either way.
  if to_regclass('cron.job') is not null then
    execute $q$
      select coalesce(jsonb_agg(jsonb_build_object(
               'jobname', j.jobname, 'schedule', j.schedule, 'active', j.active,
               'last_run', (select jsonb_build_object('status', r.status,
                                                      'start_time', r.start_time,
                                                      'end_time', r.end_time,
                                                      'return_message', r.return_message)
                              from cron.job_run_details r
                             where r.jobid = j.jobid
                             order by r.runid desc limit 1))
               order by j.jobname), '[]'::jsonb)
      from cron.job j
      where j.jobname like 'device-assignment-%'
    $q$ into v_cron;
  end if;

  return jsonb_build_object(
    'now', now(),
    'settings', (select to_jsonb(cfg) - 'singleton' from public.assignment_settings cfg),
    'servers', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'id', s.id,
               'name', s.server_name,
               'live', exists (select from device_assignment.live_servers l where l.id = s.id),
               'is_active', s.is_active,
               'is_healthy', s.is_healthy,
               'current_load', s.current_load,
               'max_capacity', s.max_capacity,
               'heartbeat_age_ms', device_assignment.interval_ms(now() - s.last_health_ping),
               'connecting_devices', (select count(*) from public.devices d
                                       where d.assigned_server_id = s.id
                                         and d.status = 'connecting'),
               'enabled', s.is_enabled)
               order by s.server_name), '[]'::jsonb)
      from public.backend_servers s
    ),
    'devices_by_status', (
      select coalesce(jsonb_object_agg(coalesce(t.status, 'null'), t.n), '{}'::jsonb)
      from (select d.status, count(*) as n from public.devices d group by d.status) t
    ),
    'devices_by_server', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'server_id', t.assigned_server_id, 'server_name', s.server_name,
               'status', t.status, 'count', t.n)
               order by s.server_name nulls first, t.status), '[]'::jsonb)
      from (select d.assigned_server_id, d.status, count(*) as n
              from public.devices d
             where d.status in ('connecting', 'connected')
             group by d.assigned_server_id, d.status) t
      left join public.backend_servers s on s.id = t.assigned_server_id
    ),
    'orphaned', (select count(*) from device_assignment.orphaned_device_ids()),
    'stale', (select count(*) from device_assignment.stale_devices),
    'live_servers', (select count(*) from device_assignment.live_servers),
    -- The servers' own error text, which users see only as a code: the latest 50.
    'device_errors', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'device_id', e.id, 'status', e.status,
               'last_error_code', device_assignment.error_code(e.status, e.last_error),
               'last_error', e.last_error, 'updated_at', e.updated_at)
               order by e.updated_at desc), '[]'::jsonb)
      from (select d.id, d.status, d.last_error, d.updated_at from public.devices d
             where d.last_error is not null
             order by d.updated_at desc limit 50) e
    ),
    'cron_jobs', v_cron
  );
end;
$$;


-- The retention purge (20261201140000_purge_own_history.sql), the one path by
-- which audit rows leave: it marks its own transaction for the append-only
-- trigger. Also drops long-poll leases that expired (a user who stopped
-- polling leaves theirs behind; the next poll of a user drops their own).
create or replace function device_assignment.purge_history()
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_events integer;
  v_runs integer := 0;
begin
  perform set_config('device_assignment.audit_purge', 'on', true);
  delete from public.device_assignment_events e
   using public.assignment_settings cfg
   where e.created_at < now() - cfg.event_retention;
  get diagnostics v_events = row_count;
  perform set_config('device_assignment.audit_purge', 'off', true);

  delete from device_assignment.long_poll_leases l where l.expires_at <= now();

  -- Dynamic because pg_cron may be missing (a database other than cron.database_name).
  if to_regclass('cron.job_run_details') is not null then
    execute $sql$
      delete from cron.job_run_details r
       where r.end_time < now() - interval '7 days'
         and r.jobid in (select j.jobid from cron.job j
                          where j.jobname in ('device-assignment-maintenance',
                                              'device-assignment-purge'))
    $sql$;
    get diagnostics v_runs = row_count;
  end if;

  return jsonb_build_object('events_deleted', v_events, 'cron_runs_deleted', v_runs);
end;
$$;

-- Public, invoker wrappers exposed through PostgREST ----------------------------------------

create or replace function public.get_device_qr(p_device_id uuid, p_wait_id uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.get_device_qr(p_device_id, p_wait_id); end $$;

comment on function public.get_device_qr(uuid, uuid) is
  'QR state of one of the caller''s devices; heals an orphaned or stale device in the same call. '
  'p_wait_id: the long-poll this call re-checks for (at most long_polls_per_user at once).';

create or replace function public.end_long_poll(p_wait_id uuid)
returns void
language plpgsql
set search_path = ''
as $$ begin perform device_assignment.end_long_poll(p_wait_id); end $$;

comment on function public.end_long_poll(uuid) is
  'Ends one of the caller''s long-polls (get_device_qr p_wait_id), freeing its slot.';

create or replace function public.set_backend_server_enabled(p_server_name text, p_enabled boolean)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.set_backend_server_enabled(p_server_name, p_enabled); end $$;

comment on function public.set_backend_server_enabled(text, boolean) is
  'Operators: keep a backend server out of the pool (its devices move now) or let it back.';

revoke all on function public.get_device_qr(uuid, uuid), device_assignment.get_device_qr(uuid, uuid)
  from public, anon, authenticated, service_role;
grant execute on function public.get_device_qr(uuid, uuid), device_assignment.get_device_qr(uuid, uuid)
  to authenticated;

revoke all on function public.end_long_poll(uuid), device_assignment.end_long_poll(uuid)
  from public, anon, authenticated, service_role;
grant execute on function public.end_long_poll(uuid), device_assignment.end_long_poll(uuid)
  to authenticated;

revoke all on function public.set_backend_server_enabled(text, boolean),
  device_assignment.set_backend_server_enabled(text, boolean)
  from public, anon, authenticated;
grant execute on function public.set_backend_server_enabled(text, boolean),
  device_assignment.set_backend_server_enabled(text, boolean)
  to service_role;

-- Backend accounts are `authenticated`: they reach the server API, whose guard
-- (authorize_server) turns away every user that is not a backend account.
grant execute on function
  public.server_heartbeat(text, integer, integer, jsonb),
  public.claim_devices(uuid, integer),
  public.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  public.report_device_status(uuid, uuid, bigint, text, text),
  public.server_shutdown(uuid),
  public.device_session_write(uuid, uuid, bigint, jsonb),
  public.device_session_read(uuid, uuid, bigint, text, text[]),
  device_assignment.server_heartbeat(text, integer, integer, jsonb),
  device_assignment.claim_devices(uuid, integer),
  device_assignment.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  device_assignment.report_device_status(uuid, uuid, bigint, text, text),
  device_assignment.server_shutdown(uuid),
  device_assignment.device_session_write(uuid, uuid, bigint, jsonb),
  device_assignment.device_session_read(uuid, uuid, bigint, text, text[])
to authenticated;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
