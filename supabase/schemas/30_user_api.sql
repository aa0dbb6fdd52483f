-- What an owner calls (through get-device-qr and reassign-device): the QR and
-- state of their device, a reassignment, the long-poll lease.

create table "device_assignment"."long_poll_leases" (
  "user_id"    uuid                     not null,
  "wait_id"    uuid                     not null,
  "expires_at" timestamp with time zone not null,
  constraint "long_poll_leases_pkey" primary key (user_id, wait_id)
);

alter table "device_assignment"."long_poll_leases"
  enable row level security;

revoke all on table device_assignment.long_poll_leases from public, anon, authenticated, service_role;

-- What an owner sees of a device: the QR state, with the error as a code.
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
  v_incident device_assignment.fleet_incidents;
  v_reason text := p_reason;
begin
  -- A device a fleet incident holds waits for it to end, as if pairing.
  if p_device.status = 'error' then
    v_incident := device_assignment.open_incident(p_device.last_error);
    if v_incident.id is not null then
      v_reason := 'fleet_incident';
    end if;
  end if;
  v_status := case
    when p_device.status = 'connected'
         and exists (select from device_assignment.live_servers l
                      where l.id = p_device.assigned_server_id) then 'connected'
    when p_device.status = any(device_assignment.statuses('holds_session')) then 'reconnecting'
    when p_device.status = 'connecting' and device_assignment.is_qr_fresh(p_device.qr_expires_at)
      then 'ready'
    when p_device.status = 'connecting' then 'pending'
    when p_device.status = 'qr_timeout' then 'qr_timeout'
    when p_device.status = 'error' and v_incident.id is not null then 'pending'
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
                when v_status in ('pending', 'reconnecting') then coalesce(v_reason, 'waiting_for_server')
                when v_status = 'not_connecting' then 'call_reassign_device'
              end,
    'reassigned', p_reassigned,
    'retry_after_ms', case
                        when v_status = 'ready' then 2000
                        when v_status in ('pending', 'reconnecting')
                             and v_reason in ('no_active_servers', 'fleet_incident') then 5000
                        when v_status = 'pending' and p_reason = 'reassignment_cooldown' then
                          greatest(device_assignment.interval_ms(
                            device_assignment.cooldown_remaining(p_device.last_reassigned_at)), 1000)
                        when v_status in ('pending', 'reconnecting') then 1000
                      end,
    'epoch', p_device.assignment_epoch,
    'last_error_code', device_assignment.error_code(p_device.status, p_device.last_error),
    'incident', case when v_incident.id is not null then jsonb_build_object(
                  'code', v_incident.code, 'since', v_incident.started_at) end
  );
end;
$$;

-- Starts or restarts pairing of one device on a live server (preferring another
-- than the current one): the user's "connect" button and the operator's
-- reset-device. The caller has locked the row. A new pairing starts from no
-- session: a stored one would be resumed instead of showing a QR.
create or replace function device_assignment.restart_pairing(
  p_device public.devices,
  p_reason text,
  p_actor text,
  p_enforce_cooldown boolean
)
returns jsonb
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_wait interval := device_assignment.cooldown_remaining(p_device.last_reassigned_at);
  v_moved record;
begin
  if p_device.status = any(device_assignment.statuses('holds_session')) then
    perform device_assignment.raise_api_error('already_connected', 409, null,
      'The device is linked. Disconnect it before pairing again.');
  end if;
  if p_enforce_cooldown and v_wait > interval '0' then
    perform device_assignment.raise_api_error('cooldown', 429,
      jsonb_build_object('retry_after_ms', device_assignment.interval_ms(v_wait)));
  end if;
  if not exists (select from device_assignment.live_servers) then
    perform device_assignment.raise_api_error('no_active_servers', 503,
      jsonb_build_object('retry_after_ms', 5000));
  end if;

  delete from device_assignment.device_sessions s where s.device_id = p_device.id;
  update public.devices d
     set status = 'connecting',
         connecting_since = now(),
         last_error = null,
         updated_at = now()
   where d.id = p_device.id;

  select a.* into v_moved
  from device_assignment.assign_devices(array[p_device.id], p_reason, p_actor, true) a;

  if v_moved.to_server_id is null then
    perform device_assignment.raise_api_error('no_active_servers', 503,
      jsonb_build_object('retry_after_ms', 5000), 'Every live server is at capacity.');
  end if;

  -- A new pairing attempt: its reassignment budget starts now.
  update public.devices d set reassign_count = 0 where d.id = p_device.id;

  return jsonb_build_object(
    'device_id', p_device.id,
    'reassigned', true,
    'from_server', v_moved.from_server_id,
    'to_server', v_moved.to_server_id,
    'epoch', v_moved.epoch
  );
end;
$$;

-- An owner restarts pairing, within the device's reassignment budget.
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

  -- A device a fleet incident holds would fail the same way anywhere: the
  -- answer says so, and nothing is moved or charged.
  if v_device.status = 'error' and (device_assignment.open_incident(v_device.last_error)).id is not null then
    return device_assignment.qr_state(v_device, 'fleet_incident', false);
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

create or replace function public.request_device_reassignment(p_device_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.request_device_reassignment(p_device_id); end $$;

comment on function public.request_device_reassignment(uuid) is
  'Start or restart pairing of one of the caller''s devices on a live server.';

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

create or replace function public.end_long_poll(p_wait_id uuid)
returns void
language plpgsql
set search_path = ''
as $$ begin perform device_assignment.end_long_poll(p_wait_id); end $$;

comment on function public.end_long_poll(uuid) is
  'Ends one of the caller''s long-polls (get_device_qr p_wait_id), freeing its slot.';

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.qr_state(devices,text,boolean),
  device_assignment.restart_pairing(devices,text,text,boolean),
  device_assignment.request_device_reassignment(uuid),
  request_device_reassignment(uuid),
  device_assignment.hold_long_poll(uuid,uuid),
  device_assignment.end_long_poll(uuid),
  end_long_poll(uuid)
from public, anon, authenticated, service_role;
grant execute on function
  device_assignment.request_device_reassignment(uuid),
  request_device_reassignment(uuid),
  device_assignment.end_long_poll(uuid),
  end_long_poll(uuid)
to authenticated;
