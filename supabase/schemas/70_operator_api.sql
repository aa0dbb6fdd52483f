-- What operators call (service role): bulk reassignment, the maintenance pass,
-- history purge, server accounts on and off, and the health view.

-- A dry run shows its plan even when no server is live: 200 with every device
-- that would move, `to: null`, and `reason: no_active_servers`. Only a real run
-- may refuse with 503.
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
        -- Each by its key, as claim_devices decides (see there why).
        select array_agg(o.id) into v_ids
        from unnest(v_ids) l(id)
        cross join lateral (select o.id from device_assignment.orphaned_devices o
                            where o.id = l.id offset 0) o;
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

create or replace function public.reassign_devices(
  p_scope text,
  p_device_id uuid default null,
  p_dry_run boolean default false
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.reassign_devices(p_scope, p_device_id, p_dry_run); end $$;

-- Device counts ------------------------------------------------------------------------------
-- What assignment_health reports per status and per server, kept in step with
-- devices instead of counted on every call (a count of 1,000,000 rows took
-- half a second). The one writer is count_devices(), a statement trigger on
-- devices: each statement appends its net change per (server, status); the
-- maintenance pass folds the rows into one per pair. A sum over the table is
-- the count, exactly, at any moment (device_counts.test.sql recounts).
create table if not exists device_assignment.device_counts (
  server_id uuid,  -- null: unassigned
  status text not null,
  n bigint not null
);
comment on table device_assignment.device_counts is
  'Devices per (assigned server, status) as appended changes; sum(n) per pair is the count. Written only by count_devices() and fold_device_counts().';
alter table device_assignment.device_counts enable row level security;
revoke all on table device_assignment.device_counts from public, anon, authenticated, service_role;

-- Security definer: a legacy backend writing devices directly (the secret key)
-- has no grant on the counts.
create or replace function device_assignment.count_devices()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_op = 'TRUNCATE' then
    delete from device_assignment.device_counts;
  elsif tg_op = 'INSERT' then
    insert into device_assignment.device_counts (server_id, status, n)
    select r.assigned_server_id, r.status, count(*) from new_rows r group by 1, 2;
  elsif tg_op = 'DELETE' then
    insert into device_assignment.device_counts (server_id, status, n)
    select r.assigned_server_id, r.status, -count(*) from old_rows r group by 1, 2;
  else
    -- The old rows out, the new rows in, netted per pair; no join, so the cost
    -- stays linear in the rows however the cached plan guessed their number
    -- (a nested loop over 10,000 old and new rows took seconds).
    insert into device_assignment.device_counts (server_id, status, n)
    select c.server_id, c.status, sum(c.n)
    from (select o.assigned_server_id as server_id, o.status, -1 as n from old_rows o
          union all
          select r.assigned_server_id, r.status, 1 from new_rows r) c
    group by 1, 2
    having sum(c.n) <> 0;
  end if;
  return null;
end;
$$;

create trigger devices_count_inserts after insert on public.devices
  referencing new table as new_rows for each statement execute function device_assignment.count_devices();
create trigger devices_count_updates after update on public.devices
  referencing old table as old_rows new table as new_rows
  for each statement execute function device_assignment.count_devices();
create trigger devices_count_deletes after delete on public.devices
  referencing old table as old_rows for each statement execute function device_assignment.count_devices();
create trigger devices_count_truncates after truncate on public.devices
  for each statement execute function device_assignment.count_devices();

-- One row per (server, status) again. Rows appended meanwhile are not in this
-- statement's snapshot, so they stay, and every sum is unchanged.
create or replace function device_assignment.fold_device_counts()
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_folded integer;
begin
  with gone as (
    delete from device_assignment.device_counts c returning c.server_id, c.status, c.n
  ), folded as (
    insert into device_assignment.device_counts (server_id, status, n)
    select g.server_id, g.status, sum(g.n) from gone g group by 1, 2 having sum(g.n) <> 0
    returning 1
  )
  select (select count(*) from gone) into v_folded;
  return v_folded;
end;
$$;

-- The latest errors, for assignment_health: a few rows of a large table.
create index if not exists devices_latest_errors
  on public.devices (updated_at desc)
  where last_error is not null;

-- One pass of fleet healing, stale resumes included; they count as `sessions_failed_over`, the reason they are
-- audited with.
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
  v_stale_resumes integer;
  v_incidents_ended integer;
  v_failures_retried integer;
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
    union
    select f.id from device_assignment.session_to_fail_over_ids() f(id)
  ) c;

  select jsonb_build_object(
           'orphaned_reassigned', count(*) filter (where h.action = 'reassigned_orphan'),
           'stale_reassigned', count(*) filter (where h.action = 'reassigned_stale'),
           'sessions_failed_over', count(*) filter (where h.action = 'session_failover'),
           'left_unassigned', count(*) filter (where h.action = 'left_unassigned'),
           'moved_to_error', count(*) filter (where h.action = 'moved_to_error'))
    into v_result
  from device_assignment.heal_devices(v_candidates, 'maintenance') h;

  select count(*) filter (where m.to_server_id is not null) into v_stale_resumes
  from device_assignment.move_stale_resumes('maintenance') m;

  -- Incidents that went quiet end (their devices go back to pairing), then a
  -- device a server failed is tried on another one.
  v_incidents_ended := device_assignment.end_quiet_incidents();
  select count(*) into v_failures_retried
  from device_assignment.move_failed_devices('maintenance') m;
  v_result := jsonb_set(v_result, '{sessions_failed_over}',
    to_jsonb((v_result ->> 'sessions_failed_over')::int + v_stale_resumes));

  update public.devices d
     set qr_code = null, updated_at = now()
   where d.qr_code is not null and d.qr_expires_at <= now();
  get diagnostics v_expired = row_count;

  perform device_assignment.fold_device_counts();

  return v_result || jsonb_build_object(
    'skipped', false,
    'servers_marked_inactive', v_marked,
    'qr_expired', v_expired,
    'failures_retried', v_failures_retried,
    'incidents_ended', v_incidents_ended,
    'duration_ms', round(extract(epoch from clock_timestamp() - v_started) * 1000, 3)
  );
end;
$$;

create or replace function public.run_assignment_maintenance()
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.run_assignment_maintenance(); end $$;

-- The retention purge, the one path by
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
      and d.status = any(device_assignment.statuses('needs_server'));

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

create or replace function public.set_backend_server_enabled(p_server_name text, p_enabled boolean)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.set_backend_server_enabled(p_server_name, p_enabled); end $$;

comment on function public.set_backend_server_enabled(text, boolean) is
  'Operators: keep a backend server out of the pool (its devices move now) or let it back.';

-- The operators' view of the fleet, with each device error's text from its
-- private table.
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

  return (
  -- The counts once (a few rows per server), read by three figures below.
  with counts as materialized (
    select c.server_id, c.status, sum(c.n) as n
    from device_assignment.device_counts c
    group by c.server_id, c.status
    having sum(c.n) <> 0
  )
  select jsonb_build_object(
    'now', now(),
    'settings', (select to_jsonb(cfg) - 'singleton' from public.assignment_settings cfg),
    'servers', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'id', s.id,
               'name', s.server_name,
               'live', l.id is not null,
               'is_active', s.is_active,
               'is_healthy', s.is_healthy,
               'current_load', s.current_load,
               'max_capacity', s.max_capacity,
               'heartbeat_age_ms', device_assignment.interval_ms(now() - s.last_health_ping),
               'connecting_devices', coalesce(k.n, 0),
               'enabled', s.is_enabled)
               order by s.server_name), '[]'::jsonb)
      from public.backend_servers s
      left join device_assignment.live_servers l on l.id = s.id
      left join counts k on k.server_id = s.id and k.status = 'connecting'
    ),
    'devices_by_status', (
      select coalesce(jsonb_object_agg(coalesce(t.status, 'null'), t.n), '{}'::jsonb)
      from (select c.status, sum(c.n) as n from counts c group by c.status) t
    ),
    'devices_by_server', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'server_id', t.assigned_server_id, 'server_name', s.server_name,
               'status', t.status, 'count', t.n)
               order by s.server_name nulls first, t.status), '[]'::jsonb)
      from (select c.server_id as assigned_server_id, c.status, c.n
              from counts c
             where c.status in ('connecting', 'connected')) t
      left join public.backend_servers s on s.id = t.assigned_server_id
    ),
    'orphaned', (select count(*) from device_assignment.orphaned_device_ids()),
    -- Open fleet incidents: the code, the servers that reported it, the devices held.
    'incidents', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'code', i.code, 'since', i.started_at,
               'servers', (select coalesce(jsonb_agg(s.server_name order by s.server_name), '[]'::jsonb)
                             from public.backend_servers s where s.id = any(i.servers)),
               'devices_held', (select count(*) from public.devices d
                                 where d.status = 'error' and d.last_error = i.code))
               order by i.started_at), '[]'::jsonb)
      from device_assignment.fleet_incidents i
      where i.ended_at is null
    ),
    'stale', (select count(*) from device_assignment.stale_devices),
    'live_servers', (select count(*) from device_assignment.live_servers),
    -- The latest 50 errors: the code users see, and the server's own text,
    -- which only operators read (the code alone where there is no text).
    'device_errors', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'device_id', e.id, 'status', e.status,
               'last_error_code', e.last_error,
               'last_error', coalesce(t.error_text, e.last_error),
               'reported_by_server', t.reported_by_server,
               'updated_at', e.updated_at)
               order by e.updated_at desc), '[]'::jsonb)
      from (select d.id, d.status, d.last_error, d.updated_at from public.devices d
             where d.last_error is not null
             order by d.updated_at desc limit 50) e
      left join device_assignment.device_error_text t on t.device_id = e.id
    ),
    'cron_jobs', v_cron
  ));
end;
$$;

create or replace function public.assignment_health()
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.assignment_health(); end $$;

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.reassign_devices(text,uuid,boolean),
  reassign_devices(text,uuid,boolean),
  device_assignment.run_assignment_maintenance(),
  run_assignment_maintenance(),
  device_assignment.count_devices(),
  device_assignment.fold_device_counts(),
  device_assignment.purge_history(),
  device_assignment.set_backend_server_enabled(text,boolean),
  set_backend_server_enabled(text,boolean),
  device_assignment.assignment_health(),
  assignment_health()
from public, anon, authenticated, service_role;
grant execute on function
  device_assignment.reassign_devices(text,uuid,boolean),
  reassign_devices(text,uuid,boolean),
  device_assignment.run_assignment_maintenance(),
  run_assignment_maintenance(),
  device_assignment.set_backend_server_enabled(text,boolean),
  set_backend_server_enabled(text,boolean),
  device_assignment.assignment_health(),
  assignment_health()
to service_role;
