-- What backend servers call, each with the rights of its own account:
-- heartbeat, claims, QR and pairing-code publication, status reports, shutdown.

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

-- Locks the device and checks that the caller is its current owner at the
-- current epoch, after checking that the caller may act as that server at all.
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

-- A server says it is alive, and which process it is (p_instance_id).
create or replace function device_assignment.server_heartbeat(
  p_server_name text,
  p_current_load integer,
  p_max_capacity integer,
  p_metadata jsonb,
  p_instance_id uuid default null
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
  v_previous_instance uuid;
  v_resumed integer := 0;
  v_linked uuid[];
  v_next_expiry interval;
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

  -- The process that sent the previous heartbeat, read under the row's lock.
  select s.instance_id into v_previous_instance
  from public.backend_servers s where s.server_name = p_server_name
  for no key update;

  insert into public.backend_servers as s
    (server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping, metadata,
     instance_id)
  values
    (p_server_name, true, true, p_current_load, p_max_capacity, now(), coalesce(p_metadata, '{}'),
     p_instance_id)
  on conflict (server_name) do update
    set is_active = true,
        is_healthy = true,
        current_load = greatest(excluded.current_load, (
          select count(*)::integer from public.devices d
          where d.assigned_server_id = s.id
            and d.status = any(device_assignment.statuses('waits_for_server')))),
        max_capacity = excluded.max_capacity,
        last_health_ping = excluded.last_health_ping,
        metadata = excluded.metadata,
        instance_id = coalesce(excluded.instance_id, s.instance_id),
        updated_at = now()
      -- Re-checked under the row lock: a disable committed since the guard read wins.
      where s.is_enabled
  returning s.* into v_server;
  if not found then
    perform device_assignment.server_disabled_error();
  end if;

  -- A new process under this name, before the old one's lease ran out (a crash
  -- and a quick restart): the linked sessions the old process held are held by
  -- nobody, and no claim lists a connected device. They fail over to this
  -- server's new process (epoch bumped, `reconnecting` when a session is
  -- stored), which its next claim resumes.
  if p_instance_id is not null and v_previous_instance is distinct from p_instance_id
     and v_previous_instance is not null then
    select array_agg(l.id) into v_linked
    from (select d.id from public.devices d
           where d.assigned_server_id = v_server.id and d.status = 'connected'
           order by d.id for update) l;
    select count(*)::integer into v_resumed
    from device_assignment.move_devices(
      v_linked, array_fill(v_server.id, array[coalesce(cardinality(v_linked), 0)]),
      'session_failover', 'server:' || v_server.server_name);
  end if;

  select cfg.heartbeat_timeout into v_timeout from public.assignment_settings cfg;

  -- When the next lease of another live server runs out: a claim just after
  -- it takes that server's devices if it has died, where waiting for the next
  -- poll would leave them a poll longer without a server.
  select min(l.last_health_ping) + v_timeout - now() into v_next_expiry
  from device_assignment.live_servers l
  where l.id <> v_server.id;

  return jsonb_build_object(
    'server_id', v_server.id,
    'server_name', v_server.server_name,
    'heartbeat_timeout_ms', device_assignment.interval_ms(v_timeout),
    'connecting_grace_ms', (select device_assignment.interval_ms(cfg.connecting_grace)
                              from public.assignment_settings cfg),
    'lease_expires_at', v_server.last_health_ping + v_timeout,
    'sessions_failed_over', v_resumed,
    'next_lease_expiry_ms', device_assignment.interval_ms(v_next_expiry)
  );
end;
$$;

create or replace function public.server_heartbeat(
  p_server_name text,
  p_current_load integer default 0,
  p_max_capacity integer default null,
  p_metadata jsonb default '{}'::jsonb,
  p_instance_id uuid default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  return device_assignment.server_heartbeat(
    p_server_name, p_current_load, p_max_capacity, p_metadata, p_instance_id);
end
$$;

comment on function public.server_heartbeat(text, integer, integer, jsonb, uuid) is
  'Backend servers: renew this server''s lease (creating its row); p_instance_id names the process.';

-- A server's work: the devices it holds (sessions to resume first), then as
-- many unowned ones as its room allows. `claimed` says the row was taken now;
-- `resume` that the server must resume its stored session, without a QR.
create or replace function device_assignment.claim_devices(p_server_id uuid, p_limit integer)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean,
  resume boolean
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
  v_queued uuid[];
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
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false,
             d.status = 'reconnecting'
      from public.devices d
      where d.status = 'reconnecting' and d.assigned_server_id = p_server_id
      order by d.connecting_since nulls first, d.id
      limit p_limit
    ) r
    union all
    select * from (
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false,
             d.status = 'reconnecting'
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
  -- another claimer holds. First the claim queue: "connecting and unassigned"
  -- is a condition on the row alone, which the lock re-checks on the row's
  -- latest version (a row mark keeps the quals a partial index implies), so a
  -- locked queue row is orphaned (the first half of orphaned_devices) and
  -- stays so while we hold it. A claim the queue fills reads no server
  -- (maintenance and get_device_qr hand sessions over too).
  select array_agg(t.id) into v_queued
  from (
    select d.id
    from public.devices d
    where d.status = 'connecting' and d.assigned_server_id is null
    order by d.connecting_since nulls first, d.id
    limit v_room
    for update of d skip locked
  ) t;
  v_room := v_room - coalesce(cardinality(v_queued), 0);

  -- Then sessions nobody holds, then connecting devices of servers that are
  -- not live; each reads about as many index entries as it takes. These are
  -- decided in a new statement, whose fresh snapshot sees every claim and
  -- heartbeat committed meanwhile: the lock's re-check of a row cannot see
  -- through the anti-join that says its server is not live.
  if v_room > 0 then
    select array_agg(t.id) into v_locked
    from (
      select d.id
      from public.devices d
      where d.id = any(array(select device_assignment.session_to_fail_over_ids()))
      order by d.connecting_since nulls first, d.id
      limit v_room
      for update of d skip locked
    ) t;
  end if;

  if v_room > coalesce(cardinality(v_locked), 0) then
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
  if coalesce(cardinality(v_queued), 0) + coalesce(cardinality(v_locked), 0) = 0 then
    return;
  end if;

  -- Each locked id is looked up by its key (lateral, fenced by OFFSET 0). Filtered
  -- by `id = any(...)`, the views let the planner walk a partial index instead,
  -- and right after a burst of orphans, whose statistics say the queue is empty,
  -- it read the whole queue on every claim (18 ms at 1,000,000 devices).
  if v_locked is not null then
    select array_agg(f.id) into v_ids
    from unnest(v_locked) l(id)
    cross join lateral (select f.id from device_assignment.sessions_to_fail_over f
                        where f.id = l.id offset 0) f;
    return query
      select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true,
             m.status = 'reconnecting'
      from device_assignment.move_devices(
        v_ids, array_fill(p_server_id, array[coalesce(cardinality(v_ids), 0)]),
        'session_failover', v_actor) m
      cross join lateral (select d.device_name, d.qr_expires_at from public.devices d
                          where d.id = m.device_id offset 0) d;

    select coalesce(v_queued, '{}') || array_agg(o.id) into v_queued
    from unnest(v_locked) l(id)
    cross join lateral (select o.id from device_assignment.orphaned_devices o
                        where o.id = l.id offset 0) o;
  end if;
  return query
    select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true,
           m.status = 'reconnecting'
    from device_assignment.move_devices(
      v_queued, array_fill(p_server_id, array[coalesce(cardinality(v_queued), 0)]),
      'claimed', v_actor) m
    cross join lateral (select d.device_name, d.qr_expires_at from public.devices d
                        where d.id = m.device_id offset 0) d;
end;
$$;

create function public.claim_devices(p_server_id uuid, p_limit integer default 100)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean,
  pairing_phone text,
  resume boolean
)
language plpgsql
set search_path = ''
as $$
begin
  perform device_assignment.expire_pairing_requests();
  -- The numbers wanted are looked up once for the whole answer, not per row.
  return query
    with c as materialized (
      select * from device_assignment.claim_devices(p_server_id, p_limit) with ordinality
    )
    select c.device_id, c.assignment_epoch, c.device_name, c.status, c.qr_expires_at, c.claimed,
           w.phone, c.resume
    from c
    left join device_assignment.pairing_phones_wanted(p_server_id, array(select c.device_id from c)) w
      on w.device_id = c.device_id
    order by c.ordinality;
end
$$;

-- A server that cannot resume a session (it never stored one, or does not know
-- how) may pair the device afresh: its QR turns a `reconnecting` device into a
-- `connecting` one, and the abandoned session is deleted, so a server unaware
-- of resumes is harmless.
create or replace function device_assignment.publish_device_qr(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_qr text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_device public.devices;
begin
  if p_qr is null or length(p_qr) = 0 or length(p_qr) > 65536 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_qr'), 'A QR payload of 1 to 65536 characters.');
  end if;
  if p_expires_at is null or p_expires_at <= now() or p_expires_at > now() + interval '10 minutes' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_expires_at'), 'An expiry in the next 10 minutes.');
  end if;

  v_device := device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);
  if v_device.status <> all(device_assignment.statuses('waits_for_server')) then
    perform device_assignment.raise_api_error('not_connecting', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status));
  end if;
  if v_device.status = 'reconnecting' then
    delete from device_assignment.device_sessions s where s.device_id = p_device_id;
  end if;

  update public.devices d
     set status = 'connecting',
         connecting_since = case when d.status = 'connecting' then d.connecting_since else now() end,
         qr_code = p_qr,
         qr_updated_at = now(),
         qr_expires_at = p_expires_at,
         last_error = null,
         updated_at = now()
   where d.id = p_device_id;

  -- A QR proves WhatsApp takes this fleet again: any incident ends.
  if exists (select from device_assignment.fleet_incidents i where i.ended_at is null) then
    perform device_assignment.end_incidents(
      'recovered:' || (select s.server_name from public.backend_servers s where s.id = p_server_id));
  end if;

  return jsonb_build_object(
    'device_id', p_device_id,
    'accepted', true,
    'qr_updated_at', now(),
    'qr_expires_at', p_expires_at
  );
end;
$$;

create or replace function public.publish_device_qr(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_qr text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.publish_device_qr(p_device_id, p_server_id, p_epoch, p_qr, p_expires_at); end $$;

-- Server API ----------------------------------------------------------------------------

-- Fenced exactly like publish_device_qr (fenced_device: the device's current
-- server at the current epoch, row locked): a server the device has left gets
-- `fenced`, and its late code is never served. A code replaces the one before
-- it; QR rotations leave it alone.
create or replace function device_assignment.publish_device_pairing_code(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_code text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_device public.devices;
begin
  if p_code is null or p_code !~ '^[A-Za-z0-9-]{4,32}$' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_code'), 'A code of 4 to 32 letters, digits or dashes.');
  end if;
  if p_expires_at is null or p_expires_at <= now() or p_expires_at > now() + interval '10 minutes' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_expires_at'), 'An expiry in the next 10 minutes.');
  end if;

  v_device := device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);
  if v_device.status <> 'connecting' then
    perform device_assignment.raise_api_error('not_connecting', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status));
  end if;

  update device_assignment.pairing_requests r
     set code = p_code, code_epoch = p_epoch, code_expires_at = p_expires_at
   where r.device_id = p_device_id and r.expires_at > now();
  if not found then
    perform device_assignment.raise_api_error('no_pairing_request', 409,
      jsonb_build_object('device_id', p_device_id),
      'Nobody is waiting for a code for this device (the request expired or was answered).');
  end if;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true, 'code_expires_at', p_expires_at);
end;
$$;

create or replace function public.publish_device_pairing_code(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_code text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.publish_device_pairing_code(p_device_id, p_server_id, p_epoch, p_code, p_expires_at); end $$;

-- `logged_out`: WhatsApp refused the stored session (the user unlinked the
-- device on the phone), or the server has none to resume. The session is
-- deleted and the device waits, `disconnected`, for its owner to pair again.
create or replace function device_assignment.report_device_status(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_status text,
  p_error text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_status text := case when p_status = 'logged_out' then 'disconnected' else p_status end;
  v_error text := case when p_status = 'logged_out' then 'logged_out' else left(p_error, 1000) end;
begin
  if p_status is null or p_status <> all(device_assignment.statuses('reportable')) then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_status'),
      'One of ' || array_to_string(device_assignment.statuses('reportable'), ', ') || '.');
  end if;

  perform device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);

  if p_status = 'logged_out' then
    delete from device_assignment.device_sessions s where s.device_id = p_device_id;
  end if;

  update public.devices d
     set status = v_status,
         last_error = case when v_status = any(device_assignment.statuses('keeps_error')) then v_error end,
         qr_code = case when v_status = 'connecting' then d.qr_code end,
         qr_updated_at = case when v_status = 'connecting' then d.qr_updated_at end,
         qr_expires_at = case when v_status = 'connecting' then d.qr_expires_at end,
         connecting_since = case when v_status = 'connecting'
                                 then coalesce(d.connecting_since, now()) end,
         reassign_count = case when v_status = 'connected' then 0 else d.reassign_count end,
         updated_at = now()
   where d.id = p_device_id;

  -- A failure counts toward a fleet incident (25_failures.sql); a connection
  -- again proves WhatsApp takes this fleet, which ends any incident.
  if v_status = 'error' then
    perform device_assignment.note_failure(p_server_id, device_assignment.error_code(v_status, v_error));
  elsif v_status = 'connected' then
    perform device_assignment.end_incidents(
      'recovered:' || (select s.server_name from public.backend_servers s where s.id = p_server_id));
  end if;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true, 'status', v_status);
end;
$$;

create or replace function public.report_device_status(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_status text,
  p_error text default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.report_device_status(p_device_id, p_server_id, p_epoch, p_status, p_error); end $$;

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
    and d.status = any(device_assignment.statuses('needs_server'));

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

create or replace function public.server_shutdown(p_server_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.server_shutdown(p_server_id); end $$;

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.authorize_server(uuid,text),
  device_assignment.server_disabled_error(),
  device_assignment.fenced_device(uuid,uuid,bigint),
  device_assignment.server_heartbeat(text,integer,integer,jsonb,uuid),
  server_heartbeat(text,integer,integer,jsonb,uuid),
  device_assignment.claim_devices(uuid,integer),
  claim_devices(uuid,integer),
  device_assignment.publish_device_qr(uuid,uuid,bigint,text,timestamp with time zone),
  publish_device_qr(uuid,uuid,bigint,text,timestamp with time zone),
  device_assignment.publish_device_pairing_code(uuid,uuid,bigint,text,timestamp with time zone),
  publish_device_pairing_code(uuid,uuid,bigint,text,timestamp with time zone),
  device_assignment.report_device_status(uuid,uuid,bigint,text,text),
  report_device_status(uuid,uuid,bigint,text,text),
  device_assignment.server_shutdown(uuid),
  server_shutdown(uuid)
from public, anon, authenticated, service_role;
grant execute on function
  device_assignment.server_heartbeat(text,integer,integer,jsonb,uuid),
  server_heartbeat(text,integer,integer,jsonb,uuid),
  device_assignment.claim_devices(uuid,integer),
  claim_devices(uuid,integer),
  device_assignment.publish_device_qr(uuid,uuid,bigint,text,timestamp with time zone),
  publish_device_qr(uuid,uuid,bigint,text,timestamp with time zone),
  device_assignment.publish_device_pairing_code(uuid,uuid,bigint,text,timestamp with time zone),
  publish_device_pairing_code(uuid,uuid,bigint,text,timestamp with time zone),
  device_assignment.report_device_status(uuid,uuid,bigint,text,text),
  report_device_status(uuid,uuid,bigint,text,text),
  device_assignment.server_shutdown(uuid),
  server_shutdown(uuid)
to authenticated, service_role;
