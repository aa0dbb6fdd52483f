-- The backend-server API: the contract a worker (e.g. a Baileys process on
-- Railway) implements. Heartbeat for a lease, claim work, and write back under
-- the device's epoch, so a server that lost its lease can never overwrite the
-- work of the server that replaced it.

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
        -- Devices assigned to it since its last claim are not in its own count
        -- yet; the database's count of its connecting devices is a floor.
        current_load = greatest(excluded.current_load, (
          select count(*)::integer from public.devices d
          where d.assigned_server_id = s.id and d.status = 'connecting')),
        max_capacity = excluded.max_capacity,
        last_health_ping = excluded.last_health_ping,
        metadata = excluded.metadata,
        updated_at = now()
  returning s.* into v_server;

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
begin
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_limit'), 'A limit from 1 to 10000.');
  end if;
  select l.* into v_server from device_assignment.live_servers l where l.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('server_not_live', 409, null,
      'Call server_heartbeat first; a server whose lease lapsed may not claim devices.');
  end if;

  return query
    select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false
    from public.devices d
    where d.status = 'connecting' and d.assigned_server_id = p_server_id
    order by d.connecting_since nulls first, d.id
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
  -- that defines "orphaned".) The two halves of "orphaned" are locked one after
  -- the other: first the claim queue, then devices of servers that are not live;
  -- each reads about as many index entries as it takes.
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
      where d.id = any(array(select device_assignment.connecting_on_non_live_servers()))
      order by d.connecting_since nulls first, d.id
      limit v_room - coalesce(cardinality(v_locked), 0)
      for update of d skip locked
    ) t;
  end if;
  if coalesce(cardinality(v_locked), 0) = 0 then
    return;
  end if;

  return query
  with taken as (
    select o.id, o.assigned_server_id
    from device_assignment.orphaned_devices o
    where o.id = any(v_locked)
  ),
  claimed as (
    update public.devices d
       set assigned_server_id = p_server_id,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = now(),
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from taken t
     where d.id = t.id
    returning d.id, t.assigned_server_id as from_server_id, d.assignment_epoch,
              d.device_name, d.status, d.qr_expires_at
  ),
  load as (
    update public.backend_servers s
       set current_load = coalesce(s.current_load, 0) + (select count(*) from claimed)
     where s.id = p_server_id
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor)
    select c.id, c.from_server_id, p_server_id, c.assignment_epoch, 'claimed',
           'server:' || v_server.server_name
    from claimed c
  )
  select c.id, c.assignment_epoch, c.device_name, c.status, c.qr_expires_at, true from claimed c;
end;
$$;

-- Locks the device and checks that the caller is its current owner at the
-- current epoch; anything else is `fenced` and the caller must drop the socket.
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
  if v_device.status is distinct from 'connecting' then
    perform device_assignment.raise_api_error('not_connecting', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status));
  end if;

  update public.devices d
     set qr_code = p_qr,
         qr_updated_at = now(),
         qr_expires_at = p_expires_at,
         last_error = null,
         updated_at = now()
   where d.id = p_device_id;

  return jsonb_build_object(
    'device_id', p_device_id,
    'accepted', true,
    'qr_updated_at', now(),
    'qr_expires_at', p_expires_at
  );
end;
$$;

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
begin
  if p_status is null
     or p_status not in ('connecting', 'connected', 'disconnected', 'qr_timeout', 'error') then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_status'),
      'One of connecting, connected, disconnected, qr_timeout, error.');
  end if;

  perform device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);

  update public.devices d
     set status = p_status,
         last_error = case when p_status in ('error', 'qr_timeout', 'disconnected')
                           then left(p_error, 1000) end,
         qr_code = case when p_status = 'connecting' then d.qr_code end,
         qr_updated_at = case when p_status = 'connecting' then d.qr_updated_at end,
         qr_expires_at = case when p_status = 'connecting' then d.qr_expires_at end,
         connecting_since = case when p_status = 'connecting'
                                 then coalesce(d.connecting_since, now()) end,
         reassign_count = case when p_status = 'connected' then 0 else d.reassign_count end,
         updated_at = now()
   where d.id = p_device_id;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true, 'status', p_status);
end;
$$;

-- Graceful drain: the server leaves the pool and its connecting devices go to
-- live servers at once instead of waiting out the heartbeat timeout.
create or replace function device_assignment.server_shutdown(p_server_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_name text;
  v_devices uuid[];
  v_reassigned integer;
begin
  select s.server_name into v_name from public.backend_servers s where s.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  -- Move the devices first, never to this server, and only then mark it
  -- inactive: its row is then locked in the same id order as every other
  -- transaction's (see assign_devices), so concurrent drains cannot deadlock.
  select array_agg(d.id) into v_devices
  from public.devices d
  where d.assigned_server_id = p_server_id and d.status = 'connecting';

  select count(*) filter (where a.to_server_id is not null) into v_reassigned
  from device_assignment.assign_devices(
    v_devices, 'server_shutdown', 'server:' || v_name, false, false, p_server_id) a;

  update public.backend_servers s
     set is_active = false, updated_at = now()
   where s.id = p_server_id;

  return jsonb_build_object(
    'server_id', p_server_id,
    'released', coalesce(cardinality(v_devices), 0),
    'reassigned', v_reassigned
  );
end;
$$;

-- Public, invoker wrappers exposed through PostgREST, for service_role only.
create or replace function public.server_heartbeat(
  p_server_name text,
  p_current_load integer default 0,
  p_max_capacity integer default null,
  p_metadata jsonb default '{}'::jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.server_heartbeat(p_server_name, p_current_load, p_max_capacity, p_metadata); end $$;

-- Dropped first: 20261201170000_pairing_codes.sql adds a result column, and
-- re-applying this file over it must still work.
drop function if exists public.claim_devices(uuid, integer);
create function public.claim_devices(p_server_id uuid, p_limit integer default 100)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean
)
language plpgsql
set search_path = ''
as $$ begin return query select * from device_assignment.claim_devices(p_server_id, p_limit); end $$;

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

create or replace function public.server_shutdown(p_server_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.server_shutdown(p_server_id); end $$;

revoke all on function
  public.server_heartbeat(text, integer, integer, jsonb),
  public.claim_devices(uuid, integer),
  public.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  public.report_device_status(uuid, uuid, bigint, text, text),
  public.server_shutdown(uuid),
  device_assignment.server_heartbeat(text, integer, integer, jsonb),
  device_assignment.claim_devices(uuid, integer),
  device_assignment.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  device_assignment.report_device_status(uuid, uuid, bigint, text, text),
  device_assignment.server_shutdown(uuid)
from public, anon, authenticated;

grant execute on function
  public.server_heartbeat(text, integer, integer, jsonb),
  public.claim_devices(uuid, integer),
  public.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  public.report_device_status(uuid, uuid, bigint, text, text),
  public.server_shutdown(uuid),
  device_assignment.server_heartbeat(text, integer, integer, jsonb),
  device_assignment.claim_devices(uuid, integer),
  device_assignment.publish_device_qr(uuid, uuid, bigint, text, timestamptz),
  device_assignment.report_device_status(uuid, uuid, bigint, text, text),
  device_assignment.server_shutdown(uuid)
to service_role;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
