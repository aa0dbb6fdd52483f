-- The user API: what a signed-in user may ask about their own devices.
-- Another user's device is answered exactly like a missing one.

create or replace function device_assignment.current_user_id()
returns uuid
language plpgsql
stable
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
begin
  if v_uid is null then
    perform device_assignment.raise_api_error('unauthorized', 401, null,
      'Sign in and send the access token as "Authorization: Bearer <token>".');
  end if;
  return v_uid;
end;
$$;

-- The QR state the frontend renders, from a device row as it is now.
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
    when p_device.status = 'connected' then 'connected'
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
                when v_status = 'pending' then coalesce(p_reason, 'waiting_for_server')
                when v_status = 'not_connecting' then 'call_reassign_device'
              end,
    'reassigned', p_reassigned,
    'retry_after_ms', case
                        when v_status = 'ready' then 2000
                        when v_status = 'pending' and p_reason = 'no_active_servers' then 5000
                        when v_status = 'pending' and p_reason = 'reassignment_cooldown' then
                          greatest(device_assignment.interval_ms(
                            device_assignment.cooldown_remaining(p_device.last_reassigned_at)), 1000)
                        when v_status = 'pending' then 1000
                      end,
    'epoch', p_device.assignment_epoch,
    'last_error', p_device.last_error
  );
end;
$$;

create or replace function device_assignment.get_device_qr(p_device_id uuid)
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
  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  if v_device.status = 'connecting'
     and not device_assignment.is_qr_fresh(v_device.qr_expires_at) then
    select h.action into v_action
    from device_assignment.heal_devices(array[p_device_id], 'user:' || v_uid) h;

    select d.* into v_device from public.devices d where d.id = p_device_id;

    v_reason := case
      when v_action = 'reassigned_orphan' then 'reassigned_from_inactive_server'
      when v_action = 'reassigned_stale' then 'reassigned_stale'
      when v_device.status <> 'connecting' then null
      when exists (select from device_assignment.orphaned_devices o where o.id = p_device_id)
           or exists (select from device_assignment.stale_devices s where s.id = p_device_id) then
        case
          when not exists (select from device_assignment.live_servers) then 'no_active_servers'
          when device_assignment.cooldown_remaining(v_device.last_reassigned_at) > interval '0'
            then 'reassignment_cooldown'
          when v_device.assigned_server_id is null then 'waiting_for_server'
          else 'no_server_with_capacity'
        end
      else 'waiting_for_server'
    end;
  end if;

  return device_assignment.qr_state(
    v_device, v_reason, coalesce(v_action in ('reassigned_orphan', 'reassigned_stale'), false));
end;
$$;

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
begin
  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid
  for update;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;
  return device_assignment.restart_pairing(v_device, 'user_request', 'user:' || v_uid, true);
end;
$$;

-- Starts or restarts pairing of one device on a live server (preferring another
-- than the current one): the user's "connect" button and the operator's
-- reset-device. The caller has locked the row.
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
  if p_device.status = 'connected' then
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

-- Public, invoker wrappers: the API surface PostgREST exposes.
create or replace function public.get_device_qr(p_device_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.get_device_qr(p_device_id); end $$;

create or replace function public.request_device_reassignment(p_device_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.request_device_reassignment(p_device_id); end $$;

comment on function public.get_device_qr(uuid) is
  'QR state of one of the caller''s devices; heals an orphaned or stale device in the same call.';
comment on function public.request_device_reassignment(uuid) is
  'Start or restart pairing of one of the caller''s devices on a live server.';

revoke all on function public.get_device_qr(uuid), public.request_device_reassignment(uuid)
  from public, anon, authenticated, service_role;
grant execute on function public.get_device_qr(uuid), public.request_device_reassignment(uuid)
  to authenticated;

grant usage on schema device_assignment to authenticated, service_role;
revoke all on function device_assignment.get_device_qr(uuid),
  device_assignment.request_device_reassignment(uuid) from public;
grant execute on function device_assignment.get_device_qr(uuid),
  device_assignment.request_device_reassignment(uuid) to authenticated;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
