-- A dry run shows its plan even when no server is live: 200 with every device
-- that would move, `to: null`, and `reason: no_active_servers`. Only a real run
-- may refuse with 503. (Replaces the function of 20261128190400_operator_api.sql.)
create or replace function device_assignment.reassign_devices(
  p_scope text,
  p_device_id uuid,
  p_dry_run boolean
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_dry_run boolean := coalesce(p_dry_run, false);
  v_device public.devices;
  v_ids uuid[];
  v_moves jsonb;
  v_no_server boolean := false;
begin
  if p_scope is null or p_scope not in ('device', 'inactive', 'all_connecting') then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_scope'), 'One of device, inactive, all_connecting.');
  end if;
  if (p_scope = 'device') <> (p_device_id is not null) then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_device_id'),
      'Scope device needs a device id; the bulk scopes take none.');
  end if;

  if p_scope = 'device' then
    select d.* into v_device from public.devices d where d.id = p_device_id for update;
    if not found then
      perform device_assignment.raise_api_error('not_found', 404);
    end if;
    if v_dry_run then
      if v_device.status = 'connected' then
        perform device_assignment.raise_api_error('already_connected', 409);
      end if;
      v_ids := array[p_device_id];
      v_no_server := not exists (select from device_assignment.live_servers);
      if not v_no_server then
        select jsonb_agg(jsonb_build_object('id', a.device_id, 'from', a.from_server_id,
                                            'to', a.to_server_id))
          into v_moves
        from device_assignment.assign_devices(array[p_device_id], 'operator', 'operator', true, true) a;
      end if;
    else
      select jsonb_build_array(jsonb_build_object('id', r ->> 'device_id',
                                                  'from', r -> 'from_server',
                                                  'to', r -> 'to_server'))
        into v_moves
      from device_assignment.restart_pairing(v_device, 'operator', 'operator', false) r;
    end if;
  else
    if p_scope = 'inactive' then
      select array_agg(o.id) into v_ids from device_assignment.orphaned_device_ids() o(id);
    else
      select array_agg(d.id) into v_ids from public.devices d where d.status = 'connecting';
    end if;
    if not v_dry_run and v_ids is not null then
      -- Lock, skipping devices a claim or a healer holds, then re-select in a
      -- fresh snapshot: a device claimed meanwhile is no longer ours to move.
      select array_agg(l.id) into v_ids
      from (select d.id from public.devices d where d.id = any(v_ids)
            order by d.id for update skip locked) l;
      if p_scope = 'inactive' then
        select array_agg(o.id) into v_ids
        from device_assignment.orphaned_devices o where o.id = any(v_ids);
      else
        select array_agg(d.id) into v_ids
        from public.devices d where d.id = any(v_ids) and d.status = 'connecting';
      end if;
    end if;
    v_no_server := v_ids is not null and not exists (select from device_assignment.live_servers);
    if v_no_server and not v_dry_run then
      perform device_assignment.raise_api_error('no_active_servers', 503,
        jsonb_build_object('retry_after_ms', 5000, 'devices_waiting', cardinality(v_ids)));
    end if;
    if not v_no_server then
      select jsonb_agg(jsonb_build_object('id', a.device_id, 'from', a.from_server_id,
                                          'to', a.to_server_id))
        into v_moves
      from device_assignment.assign_devices(
        v_ids,
        case when p_scope = 'inactive' then 'server_inactive' else 'operator' end,
        'operator', false, v_dry_run) a;
    end if;
  end if;

  if v_no_server then
    -- A dry run is a plan, never a refusal: every device that would move, and
    -- that no server is live to take it.
    select jsonb_agg(jsonb_build_object('id', d.id, 'from', d.assigned_server_id, 'to', null)
                     order by d.id)
      into v_moves
    from public.devices d where d.id = any(v_ids);
  end if;

  return jsonb_build_object(
    'scope', p_scope,
    'dry_run', v_dry_run,
    'count', coalesce(jsonb_array_length(v_moves), 0),
    'devices', coalesce(v_moves, '[]'::jsonb)
  ) || case when v_no_server then jsonb_build_object('reason', 'no_active_servers')
            else '{}'::jsonb end;
end;
$$;
