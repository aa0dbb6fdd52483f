-- The operator API: bulk reassignment (the old reset-device / reset-inactive /
-- reset-all scripts), the maintenance pass that pg_cron runs, and one call that
-- answers the whole debugging checklist.

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
      select jsonb_agg(jsonb_build_object('id', a.device_id, 'from', a.from_server_id,
                                          'to', a.to_server_id))
        into v_moves
      from device_assignment.assign_devices(array[p_device_id], 'operator', 'operator', true, true) a;
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
    if v_ids is not null and not exists (select from device_assignment.live_servers) then
      perform device_assignment.raise_api_error('no_active_servers', 503,
        jsonb_build_object('retry_after_ms', 5000, 'devices_waiting', cardinality(v_ids)));
    end if;
    select jsonb_agg(jsonb_build_object('id', a.device_id, 'from', a.from_server_id,
                                        'to', a.to_server_id))
      into v_moves
    from device_assignment.assign_devices(
      v_ids,
      case when p_scope = 'inactive' then 'server_inactive' else 'operator' end,
      'operator', false, v_dry_run) a;
  end if;

  return jsonb_build_object(
    'scope', p_scope,
    'dry_run', v_dry_run,
    'count', coalesce(jsonb_array_length(v_moves), 0),
    'devices', coalesce(v_moves, '[]'::jsonb)
  );
end;
$$;

-- One pass of fleet healing. Idempotent; a pass that finds another running
-- returns at once ({"skipped": true}) instead of queueing behind it, and every
-- device it moves is locked with SKIP LOCKED, so it never waits on claims.
create or replace function device_assignment.run_assignment_maintenance()
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_started timestamptz := clock_timestamp();
  v_marked integer;
  v_expired integer;
  v_candidates uuid[];
  v_result jsonb;
begin
  if not pg_try_advisory_xact_lock(hashtext('device_assignment.run_assignment_maintenance')) then
    return jsonb_build_object('skipped', true);
  end if;

  update public.backend_servers s
     set is_active = false, updated_at = now()
    from public.assignment_settings cfg
   where s.is_active
     and (s.last_health_ping is null or s.last_health_ping <= now() - cfg.heartbeat_timeout);
  get diagnostics v_marked = row_count;

  select array_agg(c.id) into v_candidates
  from (
    select o.id from device_assignment.orphaned_device_ids() o(id)
    union
    select s.id from device_assignment.stale_devices s
  ) c;

  select jsonb_build_object(
           'orphaned_reassigned', count(*) filter (where h.action = 'reassigned_orphan'),
           'stale_reassigned', count(*) filter (where h.action = 'reassigned_stale'),
           'left_unassigned', count(*) filter (where h.action = 'left_unassigned'),
           'moved_to_error', count(*) filter (where h.action = 'moved_to_error'))
    into v_result
  from device_assignment.heal_devices(v_candidates, 'maintenance') h;

  update public.devices d
     set qr_code = null, updated_at = now()
   where d.qr_code is not null and d.qr_expires_at <= now();
  get diagnostics v_expired = row_count;

  return v_result || jsonb_build_object(
    'skipped', false,
    'servers_marked_inactive', v_marked,
    'qr_expired', v_expired,
    'duration_ms', round(extract(epoch from clock_timestamp() - v_started) * 1000, 3)
  );
end;
$$;

-- Deletes audit rows past retention and pg_cron's own run history.
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
  delete from public.device_assignment_events e
   using public.assignment_settings cfg
   where e.created_at < now() - cfg.event_retention;
  get diagnostics v_events = row_count;

  if to_regclass('cron.job_run_details') is not null then
    execute 'delete from cron.job_run_details where end_time < now() - interval ''7 days''';
    get diagnostics v_runs = row_count;
  end if;

  return jsonb_build_object('events_deleted', v_events, 'cron_runs_deleted', v_runs);
end;
$$;

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
                                         and d.status = 'connecting'))
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
    'cron_jobs', v_cron
  );
end;
$$;

create or replace function public.reassign_devices(
  p_scope text,
  p_device_id uuid default null,
  p_dry_run boolean default false
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.reassign_devices(p_scope, p_device_id, p_dry_run); end $$;

create or replace function public.run_assignment_maintenance()
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.run_assignment_maintenance(); end $$;

create or replace function public.assignment_health()
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.assignment_health(); end $$;

revoke all on function
  public.reassign_devices(text, uuid, boolean),
  public.run_assignment_maintenance(),
  public.assignment_health(),
  device_assignment.reassign_devices(text, uuid, boolean),
  device_assignment.run_assignment_maintenance(),
  device_assignment.assignment_health(),
  device_assignment.purge_history()
from public, anon, authenticated;

grant execute on function
  public.reassign_devices(text, uuid, boolean),
  public.run_assignment_maintenance(),
  public.assignment_health(),
  device_assignment.reassign_devices(text, uuid, boolean),
  device_assignment.run_assignment_maintenance(),
  device_assignment.assignment_health()
to service_role;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
