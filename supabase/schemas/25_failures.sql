-- Why a device failed, and what the fleet does about it: a failure on one
-- server is retried on another; the same failure on most servers at once is a
-- fleet incident (WhatsApp moved its web version, say), which holds the devices
-- it failed, spends none of their budget, and sends them back to pairing by
-- itself when it ends.

-- The failure classes, the one list: the codes a server reports a failure with
-- (report_device_status with p_error "<code>: <text>"), and whether another
-- server should try the device. error_code() classifies by it.
create or replace function device_assignment.failure_classes()
returns table (
  code text,
  retry_elsewhere boolean,  -- another live server may pair the device
  meaning text
)
language sql
immutable
parallel safe
set search_path = ''
as $$
  values
    ('connection_failure', true,
     'the server could not reach WhatsApp, or the connection broke'),
    ('rate_limited',       true,
     'WhatsApp refuses this server for now'),
    ('server_error',       true,
     'anything else the server failed with'),
    ('version_outdated',   false,
     'WhatsApp refused the client version: an upgrade fixes it, not a move'),
    ('qr_timeout',         false,
     'nobody scanned the QR in time: the owner restarts pairing')
$$;

-- Fleet incidents: one row per incident, opened and closed by the functions
-- below and nothing else; the audit of every start and end.
create table if not exists device_assignment.fleet_incidents (
  id bigint generated always as identity primary key,
  code text not null,
  started_at timestamptz not null default now(),
  -- The servers whose reports opened it.
  servers uuid[] not null,
  ended_at timestamptz,
  -- 'recovered:<server name>' (a QR or a connection again) or 'quiet' (the window passed).
  ended_by text,
  -- Devices it held, sent back to pairing when it ended.
  devices_released integer
);
create unique index if not exists fleet_incidents_one_open_per_code
  on device_assignment.fleet_incidents (code) where ended_at is null;
comment on table device_assignment.fleet_incidents is
  'Fleet incidents: the same failure code reported by at least half of the live servers (and two) within assignment_settings.incident_window. Rows are the audit of every start and end.';
alter table device_assignment.fleet_incidents enable row level security;
revoke all on table device_assignment.fleet_incidents from public, anon, authenticated, service_role;

-- The failures servers reported, by class, for the detection window.
create table if not exists device_assignment.failure_reports (
  server_id uuid not null,
  code text not null,
  reported_at timestamptz not null default now()
);
create index if not exists failure_reports_by_code
  on device_assignment.failure_reports (code, reported_at);
alter table device_assignment.failure_reports enable row level security;
revoke all on table device_assignment.failure_reports from public, anon, authenticated, service_role;

-- A failed device another live server should try: failed with a class that
-- retries elsewhere, and not held by an open incident of that code.
create index if not exists devices_failed
  on public.devices (last_error)
  where status = 'error';
create or replace view device_assignment.failed_devices as
select d.*
from public.devices d
where d.status = 'error'
  and d.last_error = any(array(select f.code from device_assignment.failure_classes() f
                               where f.retry_elsewhere))
  and not exists (select from device_assignment.fleet_incidents i
                   where i.ended_at is null and i.code = d.last_error);

-- The open incident that holds a device failed with p_code, if any.
create or replace function device_assignment.open_incident(p_code text)
returns device_assignment.fleet_incidents
language sql
stable
set search_path = ''
as $$
  select i.* from device_assignment.fleet_incidents i
  where i.ended_at is null and i.code = p_code
$$;

-- A server reported a failure of class p_code: remember it, and open an
-- incident when at least half of the live servers, and two, reported it within
-- the window, or at once when an incident of that code ended quiet within the
-- window: a quiet end only tries whether the failure is over, and one report
-- says it is not (the devices it released may all sit on one server now).
-- Returns the open incident of that code, if any.
create or replace function device_assignment.note_failure(p_server_id uuid, p_code text)
returns device_assignment.fleet_incidents
language plpgsql
set search_path = ''
as $$
declare
  v_window interval;
  v_servers uuid[];
  v_live integer;
  v_incident device_assignment.fleet_incidents;
begin
  if p_code is null or p_code = 'qr_timeout'
     or not exists (select from device_assignment.failure_classes() f where f.code = p_code) then
    return null;
  end if;
  select cfg.incident_window into v_window from public.assignment_settings cfg;
  insert into device_assignment.failure_reports (server_id, code) values (p_server_id, p_code);
  delete from device_assignment.failure_reports r where r.reported_at < now() - v_window;

  v_incident := device_assignment.open_incident(p_code);
  if v_incident.id is not null then
    return v_incident;
  end if;
  -- One incident per code at a time: concurrent reports decide one after another.
  perform pg_advisory_xact_lock(hashtext('device_assignment.fleet_incident:' || p_code));
  v_incident := device_assignment.open_incident(p_code);
  if v_incident.id is not null then
    return v_incident;
  end if;
  select array_agg(distinct r.server_id order by r.server_id) into v_servers
  from device_assignment.failure_reports r
  where r.code = p_code and r.reported_at >= now() - v_window
    and exists (select from device_assignment.live_servers l where l.id = r.server_id);
  select count(*) into v_live from device_assignment.live_servers;
  if coalesce(cardinality(v_servers), 0) >= greatest(2, ceil(v_live / 2.0))
     or exists (select from device_assignment.fleet_incidents i
                 where i.code = p_code and i.ended_by = 'quiet' and i.ended_at >= now() - v_window) then
    insert into device_assignment.fleet_incidents (code, servers)
    values (p_code, v_servers)
    returning * into v_incident;
  end if;
  return v_incident;
end;
$$;

-- Ends every open incident (p_code null) or one, and sends the devices each
-- held back to the claim queue, unassigned, with a fresh budget: no owner
-- acts. A device with a stored session (its resume failed) is resumed, not
-- paired again: it goes back `reconnecting`, as a failover does.
create or replace function device_assignment.end_incidents(p_ended_by text, p_code text default null)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_incident device_assignment.fleet_incidents;
  v_ids uuid[];
  v_resume uuid[];
  v_pair uuid[];
  v_ended integer := 0;
begin
  for v_incident in
    select i.* from device_assignment.fleet_incidents i
    where i.ended_at is null and (p_code is null or i.code = p_code)
    order by i.id
    for update skip locked
  loop
    select array_agg(l.id), array_agg(l.id) filter (where l.waits = 'reconnecting')
      into v_ids, v_resume
    from (select d.id, device_assignment.waiting_status(d.id) as waits
           from public.devices d
           where d.status = 'error' and d.last_error = v_incident.code
           order by d.id for update skip locked) l;
    v_pair := array(select unnest(v_ids) except select unnest(v_resume));
    perform from device_assignment.move_devices(
      v_pair, array_fill(null::uuid, array[cardinality(v_pair)]),
      'fleet_incident_ended', 'incident ' || v_incident.id, 'connecting', null);
    perform from device_assignment.move_devices(
      v_resume, array_fill(null::uuid, array[coalesce(cardinality(v_resume), 0)]),
      'fleet_incident_ended', 'incident ' || v_incident.id, 'reconnecting', null);
    update device_assignment.fleet_incidents i
       set ended_at = now(), ended_by = p_ended_by,
           devices_released = coalesce(cardinality(v_ids), 0)
     where i.id = v_incident.id;
    v_ended := v_ended + 1;
  end loop;
  return v_ended;
end;
$$;

-- Incidents whose window passed with no new report end by themselves: every
-- one (maintenance), or the one of p_code (an owner's get_device_qr, so the
-- devices it held go back to pairing without waiting for the next run).
create or replace function device_assignment.end_quiet_incidents(p_code text default null)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_code text;
  v_ended integer := 0;
begin
  for v_code in
    select i.code from device_assignment.fleet_incidents i
    cross join public.assignment_settings cfg
    where i.ended_at is null
      and (p_code is null or i.code = p_code)
      and not exists (select from device_assignment.failure_reports r
                       where r.code = i.code and r.reported_at >= now() - cfg.incident_window)
  loop
    v_ended := v_ended + device_assignment.end_incidents('quiet', v_code);
  end loop;
  return v_ended;
end;
$$;

-- A failure on one server is tried on another, like a stale device: moved to
-- another live server, back to pairing, within max_reassignments (its budget
-- is spent, never reset, by these moves).
create or replace function device_assignment.move_failed_devices(p_actor text)
returns table (device_id uuid, action text, from_server_id uuid, to_server_id uuid)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_due uuid[];
  v_max integer;
  v_plan record;
begin
  select array_agg(l.id) into v_locked
  from (select f.id from device_assignment.failed_devices f order by f.id
        for update skip locked) l;
  if v_locked is null then
    return;
  end if;
  select cfg.max_reassignments into v_max from public.assignment_settings cfg;

  select array_agg(d.id) into v_due
  from public.devices d where d.id = any(v_locked) and d.reassign_count >= v_max;
  update public.devices d
     set last_error = 'max_reassignments_exceeded: failed on ' || d.reassign_count
                      || ' servers in a row', updated_at = now()
   where d.id = any(v_due);

  for v_plan in
    select p.device_id, p.to_server_id
    from unnest(v_locked) l(id)
    cross join lateral device_assignment.plan_assignment(array[l.id], true) p
    where l.id <> all(coalesce(v_due, '{}')) and p.to_server_id is not null
  loop
    return query
      select m.device_id, 'retried_elsewhere'::text, m.from_server_id, m.to_server_id
      from device_assignment.move_devices(array[v_plan.device_id], array[v_plan.to_server_id],
                                          'server_failure', p_actor, 'connecting', null) m;
  end loop;
end;
$$;

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.failure_classes(),
  device_assignment.open_incident(text),
  device_assignment.note_failure(uuid, text),
  device_assignment.end_incidents(text, text),
  device_assignment.end_quiet_incidents(text),
  device_assignment.move_failed_devices(text)
from public, anon, authenticated, service_role;
