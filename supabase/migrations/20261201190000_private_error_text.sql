-- A server's error text is for operators only (issue 13, third review).
--
-- 20261201150000_least_privilege.sql gave users a stable last_error_code from
-- get_device_qr, but devices.last_error still held the server's own text (up
-- to 1,000 characters, internal addresses included), and `authenticated` reads
-- its own devices' rows through the Data API's table endpoint:
-- `supabase.from('devices').select('last_error')` returned it. Column grants
-- would close that and break every app that selects `*`, so the column now
-- holds only the code, and the text lives in a private table beside it:
--
--   * devices.last_error is a code (qr_timeout, logged_out,
--     max_reassignments_exceeded, disconnected, server_error), which
--     device_assignment.error_code, the one mapping, decides;
--   * device_assignment.device_error_text keeps the text, read by
--     assignment_health (operators) and nothing else;
--   * a trigger on devices.last_error is the one writer of both, so every
--     path that sets the column (report_device_status, assign_devices,
--     move_devices, publish_device_qr, restart_pairing, and a legacy backend
--     writing the table directly with the secret key) splits code from text
--     the same way, and clearing the code clears the text;
--   * rows written before this migration are split here.
--
-- Redefines error_code (a code maps to itself) and assignment_health (reads
-- the text from the private table).

-- The one mapping ---------------------------------------------------------------------------
-- (20261201150000_least_privilege.sql), now also mapping each code to itself:
-- the column it reads holds codes from here on, whatever the device's status
-- became since.
create or replace function device_assignment.error_code(p_status text, p_last_error text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case
    when p_last_error is null then null
    when p_last_error in ('qr_timeout', 'logged_out', 'max_reassignments_exceeded', 'disconnected',
                          'server_error') then p_last_error
    when p_last_error like 'max_reassignments_exceeded%' then 'max_reassignments_exceeded'
    when p_status = 'qr_timeout' then 'qr_timeout'
    when p_status = 'disconnected' then 'disconnected'
    else 'server_error'
  end;
end;
$$;

-- The text ----------------------------------------------------------------------------------
-- Not in an exposed schema, RLS on and no policy, no grant to anyone: only the
-- trigger below writes it and assignment_health (security definer) reads it.
-- The foreign key is checked at commit: a device inserted with an error gets
-- its text row from a BEFORE trigger, before the device row itself exists.
create table if not exists device_assignment.device_error_text (
  device_id uuid primary key
    references public.devices (id) on delete cascade deferrable initially deferred,
  error_text text not null,
  reported_by_server uuid,
  reported_at timestamptz not null default now()
);
comment on table device_assignment.device_error_text is
  'The text behind each device''s last_error code, for operators (assignment_health); users never read it.';
comment on column device_assignment.device_error_text.reported_by_server is
  'The server the device was assigned to when the text was written; null for the bundle''s own text.';
alter table device_assignment.device_error_text enable row level security;
revoke all on device_assignment.device_error_text from public, anon, authenticated, service_role;

-- The one writer ----------------------------------------------------------------------------
-- A trigger, because the column has writers in five functions of earlier
-- migrations and, on an upgraded project, in legacy backends that update the
-- table directly with the secret key: every one of them passes through here.
-- Security definer: a direct write runs the trigger as the writer's role,
-- which has no grant on the text table.
create or replace function device_assignment.keep_error_text_private()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code text;
begin
  v_code := device_assignment.error_code(new.status, new.last_error);
  if new.last_error is distinct from v_code then
    insert into device_assignment.device_error_text as t
      (device_id, error_text, reported_by_server, reported_at)
    values (new.id, left(new.last_error, 1000), new.assigned_server_id, now())
    on conflict (device_id) do update
      set error_text = excluded.error_text,
          reported_by_server = excluded.reported_by_server,
          reported_at = excluded.reported_at;
    new.last_error := v_code;
  elsif tg_op = 'INSERT' or new.last_error is distinct from old.last_error then
    -- A new code with no text (logged_out), or no error: no older text stays
    -- beside it. A code written back unchanged (a move keeps the device's
    -- error) keeps its text.
    delete from device_assignment.device_error_text t where t.device_id = new.id;
  end if;
  return new;
end;
$$;

drop trigger if exists devices_keep_error_text_private on public.devices;
create trigger devices_keep_error_text_private
  before insert or update of last_error on public.devices
  for each row
  execute function device_assignment.keep_error_text_private();

-- Upgrade -----------------------------------------------------------------------------------
-- Rows that still hold text (written before this migration, or while the
-- trigger was disabled) are written back through the trigger, which moves the
-- text and leaves the code. A function, so the pgTAP suite runs the very
-- statement the upgrade runs.
create or replace function device_assignment.hide_error_texts()
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_moved integer;
begin
  update public.devices d
     set last_error = d.last_error
   where d.last_error is distinct from device_assignment.error_code(d.status, d.last_error);
  get diagnostics v_moved = row_count;
  return v_moved;
end;
$$;

do $$
declare
  v_moved integer := device_assignment.hide_error_texts();
begin
  if v_moved > 0 then
    raise notice 'devices.last_error: % server error texts moved to device_assignment.device_error_text; the column keeps their codes',
      v_moved;
  end if;
end
$$;

-- assignment_health (20261201150000_least_privilege.sql), reading the text
-- from its private table.
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
  );
end;
$$;

revoke all on function device_assignment.hide_error_texts(), device_assignment.keep_error_text_private()
  from public, anon, authenticated, service_role;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
