-- A resume that never reports (issue 11): a `reconnecting` device whose server
-- is live but has reported neither `connected` nor `logged_out` within the
-- connecting grace is moved again, to another live server, as a pairing device
-- that shows no QR within that grace is (stale_devices). Without this a server
-- that keeps heartbeating while its resumes hang would hold the session, and
-- the user offline, forever: the failover rule only sees servers that died.
--
-- The clock is `assigned_at` (set by every move to a server), not
-- `connecting_since`, which a session keeps across moves.

-- The maintenance pass asks this every time: without an index of its own it
-- read the whole table to find none (376 ms at 1,000,000 devices in
-- bench/run.ts --only=sql); resumes are few, so a partial index keeps it to them.
create index if not exists devices_resuming_since
  on public.devices (assigned_at) where status = 'reconnecting';

create or replace view device_assignment.stale_resumes as
select d.*
from public.devices d
join device_assignment.live_servers l on l.id = d.assigned_server_id
cross join public.assignment_settings cfg
where d.status = 'reconnecting'
  and d.assigned_at < now() - cfg.connecting_grace;

-- Moves every stale resume to another live server through the one writer
-- (assign_devices → move_devices): the epoch bump fences the server that hung,
-- the audit row says `session_failover`, and a device keeps its stored session
-- (move_devices keeps it `reconnecting`). With no other live server with room
-- the device is left unassigned, for the next claim. Rows another transaction
-- holds are skipped (assign_devices locks with SKIP LOCKED); the next pass
-- takes them.
create or replace function device_assignment.move_stale_resumes(p_actor text)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_ids uuid[];
begin
  select array_agg(s.id order by s.id) into v_ids from device_assignment.stale_resumes s;
  return query
    select a.device_id, a.from_server_id, a.to_server_id, a.epoch
    from device_assignment.assign_devices(v_ids, 'session_failover', p_actor, true) a;
end;
$$;

-- One pass of fleet healing (20261201130000_session_store.sql), now also moving
-- stale resumes; they count as `sessions_failed_over`, the reason they are
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
  v_result := jsonb_set(v_result, '{sessions_failed_over}',
    to_jsonb((v_result ->> 'sessions_failed_over')::int + v_stale_resumes));

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

revoke execute on all functions in schema device_assignment from public;
