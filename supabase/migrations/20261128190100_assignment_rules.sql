-- The rules of assignment, each defined once: live server, fresh QR, orphaned
-- device, stale device, cooldown; how a device is matched to a server; and the
-- healing policy that get_device_qr and maintenance share.
--
-- Everything here is an internal of `device_assignment` and runs with the
-- privileges of the API function that calls it.

-- Functions that plan over sets of devices carry `set jit = off`: their row
-- estimates (generate_series, array parameters) look large enough to trigger
-- JIT compilation, which costs ~300 ms against a sub-millisecond run.
-- Small helpers are plpgsql rather than sql: every function here pins its
-- search_path, which stops PostgreSQL from inlining a sql function, and
-- PostgreSQL 15 then plans a sql function's body anew in every transaction,
-- while plpgsql keeps its plans for the session (3x faster per request).

-- A server is live when it is active, healthy, and heartbeated within the timeout.
create or replace view device_assignment.live_servers as
select s.*
from public.backend_servers s
cross join public.assignment_settings cfg
where s.is_active
  and s.is_healthy
  and s.last_health_ping > now() - cfg.heartbeat_timeout;

-- A QR is fresh while it has not expired. An expired QR is never served.
create or replace function device_assignment.is_qr_fresh(p_expires_at timestamptz)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
begin
  return coalesce(p_expires_at > now(), false);
end;
$$;

-- A device is orphaned when it is connecting and its server is null or not live.
-- Written as its two halves so each is reached through an index (the claim
-- queue; the devices of the few servers that are not live) and finding none
-- reads no device; the foreign key guarantees a device's server exists.
create or replace view device_assignment.orphaned_devices as
select d.*
from public.devices d
where d.status = 'connecting'
  and d.assigned_server_id is null
union all
select d.*
from public.backend_servers s
join public.devices d on d.assigned_server_id = s.id and d.status = 'connecting'
where not exists (select from device_assignment.live_servers l where l.id = s.id);

-- The same rule, enumerated: every orphaned device's id, each half reached
-- through its own index, so finding none reads no device. (The planner, left
-- to itself with the view, guesses a third of the servers are not live and
-- hash-joins every connecting device; OFFSET 0 keeps the per-server probe.)
-- 05_operator_api.test.sql checks that it and the view always agree.
create or replace function device_assignment.connecting_on_non_live_servers()
returns setof uuid
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
    select x.id
    from public.backend_servers s
    cross join lateral (
      select d.id
      from public.devices d
      where d.assigned_server_id = s.id and d.status = 'connecting'
      offset 0
    ) x
    where not exists (select from device_assignment.live_servers l where l.id = s.id);
end;
$$;

create or replace function device_assignment.orphaned_device_ids()
returns setof uuid
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
    select d.id
    from public.devices d
    where d.status = 'connecting' and d.assigned_server_id is null
    union all
    select device_assignment.connecting_on_non_live_servers();
end;
$$;

-- A device is stale when it is connecting on a live server that has produced no
-- fresh QR for longer than the grace period since assignment or its last QR.
create or replace view device_assignment.stale_devices as
select d.*
from public.devices d
join device_assignment.live_servers l on l.id = d.assigned_server_id
cross join public.assignment_settings cfg
where d.status = 'connecting'
  and greatest(d.assigned_at, d.qr_updated_at) < now() - cfg.connecting_grace
  and not device_assignment.is_qr_fresh(d.qr_expires_at);

-- How long until a device may be moved again; zero when it may move now.
create or replace function device_assignment.cooldown_remaining(p_last_reassigned_at timestamptz)
returns interval
language plpgsql
stable
set search_path = ''
as $$
declare
  v_cooldown interval;
begin
  if p_last_reassigned_at is null then
    return interval '0';
  end if;
  select cfg.reassign_cooldown into v_cooldown from public.assignment_settings cfg;
  return greatest(p_last_reassigned_at + v_cooldown - now(), interval '0');
end;
$$;

create or replace function device_assignment.interval_ms(p_interval interval)
returns bigint
language plpgsql
immutable
set search_path = ''
as $$
begin
  return ceil(extract(epoch from p_interval) * 1000)::bigint;
end;
$$;

create or replace function device_assignment.raise_api_error(
  p_code text,
  p_http_status integer,
  p_details jsonb default null,
  p_hint text default null
)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- PostgREST answers SQLSTATE PTxyz with HTTP status xyz and passes message,
  -- details and hint through: the edge functions map `message` to their codes.
  raise exception using
    message = p_code,
    errcode = 'PT' || p_http_status::text,
    detail = coalesce(p_details::text, ''),
    hint = coalesce(p_hint, '');
end;
$$;

-- Matches devices to live servers with room, lowest load relative to capacity
-- first (ties: most recent heartbeat). Read-only: callers lock and apply.
--
-- Each server offers "slots" scored by the load it would have after taking one
-- more device; taking the best N slots fills servers evenly (water-filling).
-- A server offers at most about twice its fair share, which keeps the slot set
-- near 2N rows however many servers exist.
-- With p_avoid_current (a stale device), the server it is leaving is skipped
-- when any other server has room; p_device_ids then holds a single device.
-- p_exclude_server is never picked (a server draining itself).
create or replace function device_assignment.plan_assignment(
  p_device_ids uuid[],
  p_avoid_current boolean default false,
  p_exclude_server uuid default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid)
language sql
stable
set search_path = ''
set jit = off
as $$
  with moving as (
    select d.id,
           d.assigned_server_id,
           row_number() over (order by d.connecting_since nulls last, d.id) as rn
    from public.devices d
    where d.id = any(p_device_ids)
  ),
  demand as (
    select count(*)::integer as n,
           (array_agg(assigned_server_id))[1] as leaving
    from moving
  ),
  with_room as (
    select l.id,
           coalesce(l.current_load, 0) as load,
           coalesce(l.max_capacity, cfg.nominal_capacity)::numeric as scale,
           case when l.max_capacity is null then demand.n
                else greatest(l.max_capacity - coalesce(l.current_load, 0), 0) end as room,
           l.last_health_ping
    from device_assignment.live_servers l
    cross join public.assignment_settings cfg
    cross join demand
    where (l.max_capacity is null or coalesce(l.current_load, 0) < l.max_capacity)
      and l.id is distinct from p_exclude_server
  ),
  candidates as (
    select w.*
    from with_room w, demand
    where not (
      p_avoid_current
      and w.id = demand.leaving
      and exists (select from with_room o where o.id <> demand.leaving)
    )
  ),
  slots as (
    select c.id as server_id,
           row_number() over (
             order by (c.load + k)::numeric / c.scale, c.last_health_ping desc, c.id, k
           ) as sn
    from candidates c
    cross join demand
    cross join lateral generate_series(
      1,
      least(c.room, demand.n,
            ceil(2.0 * demand.n / greatest((select count(*) from candidates), 1))::integer + 1)
    ) as k
  )
  select m.id, m.assigned_server_id, s.server_id
  from moving m
  left join slots s on s.sn = m.rn
$$;

-- Moves devices to the servers plan_assignment picks, bumping each device's
-- epoch (so the server it leaves is fenced), clearing its QR, moving load
-- between servers, and writing one audit row per device. A device for which no
-- server has room is left unassigned for the next claim; a device that was
-- already unassigned and still finds no room is left untouched.
-- Rows locked elsewhere are skipped, never waited for.
create or replace function device_assignment.assign_devices(
  p_device_ids uuid[],
  p_reason text,
  p_actor text,
  p_avoid_current boolean default false,
  p_dry_run boolean default false,
  p_exclude_server uuid default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_id uuid;
  v_moved_ids uuid[];
  v_from uuid[];
  v_to uuid[];
  v_epochs bigint[];
begin
  if coalesce(cardinality(p_device_ids), 0) = 0 then
    return;
  end if;

  if p_avoid_current and cardinality(p_device_ids) > 1 then
    foreach v_id in array p_device_ids loop
      return query
        select * from device_assignment.assign_devices(
          array[v_id], p_reason, p_actor, true, p_dry_run, p_exclude_server);
    end loop;
    return;
  end if;

  if p_dry_run then
    return query
      select p.device_id, p.from_server_id, p.to_server_id, d.assignment_epoch + 1
      from device_assignment.plan_assignment(p_device_ids, p_avoid_current, p_exclude_server) p
      join public.devices d on d.id = p.device_id
      where p.to_server_id is not null or p.from_server_id is not null;
    return;
  end if;

  select array_agg(l.id) into v_locked
  from (
    select d.id from public.devices d
    where d.id = any(p_device_ids)
    order by d.id
    for update skip locked
  ) l;

  with plan as (
    select p.*
    from device_assignment.plan_assignment(v_locked, p_avoid_current, p_exclude_server) p
    where p.to_server_id is not null or p.from_server_id is not null
  ),
  moved as (
    update public.devices d
       set assigned_server_id = p.to_server_id,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = case when p.to_server_id is null then null else now() end,
           last_reassigned_at = case when p.to_server_id is null then d.last_reassigned_at else now() end,
           reassign_count = d.reassign_count + (p.to_server_id is not null)::integer,
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from plan p
     where d.id = p.device_id
    returning d.id, p.from_server_id, p.to_server_id, d.assignment_epoch
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor)
    select m.id, m.from_server_id, m.to_server_id, m.assignment_epoch, p_reason, p_actor
    from moved m
  )
  select array_agg(m.id), array_agg(m.from_server_id), array_agg(m.to_server_id),
         array_agg(m.assignment_epoch)
    into v_moved_ids, v_from, v_to, v_epochs
  from moved m;

  if v_moved_ids is null then
    return;
  end if;

  -- Server rows are locked in id order before their load changes, so two
  -- transactions moving devices between the same servers never deadlock.
  -- NO KEY UPDATE, like the load update itself, does not conflict with the
  -- KEY SHARE locks that the devices foreign key took above.
  perform from public.backend_servers s
   where s.id = any(v_from) or s.id = any(v_to)
   order by s.id
   for no key update;

  update public.backend_servers s
     set current_load = greatest(coalesce(s.current_load, 0) + c.delta, 0)
    from (
      select server_id, sum(delta)::integer as delta
      from (
        select unnest(v_to) as server_id, 1 as delta
        union all
        select unnest(v_from), -1
      ) changes
      where server_id is not null
      group by server_id
    ) c
   where s.id = c.server_id and c.delta <> 0;

  return query
    select * from unnest(v_moved_ids, v_from, v_to, v_epochs);
end;
$$;

-- The healing policy, shared by get_device_qr (one device) and maintenance (all):
-- lock the candidates, then decide from what is committed now, so two healers
-- never move the same device twice. Orphaned and stale devices past
-- max_reassignments go to `error`; those in cooldown wait; the rest move.
create or replace function device_assignment.heal_devices(p_device_ids uuid[], p_actor text)
returns table (device_id uuid, action text, from_server_id uuid, to_server_id uuid)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_orphaned uuid[];
  v_stale uuid[];
  v_max integer;
begin
  select array_agg(l.id) into v_locked
  from (
    select d.id from public.devices d
    where d.id = any(p_device_ids) and d.status = 'connecting'
    order by d.id
    for update skip locked
  ) l;
  if v_locked is null then
    return;
  end if;

  select cfg.max_reassignments into v_max from public.assignment_settings cfg;

  return query
  with due as (
    select d.id, d.assigned_server_id
    from public.devices d
    where d.id = any(v_locked)
      and d.reassign_count >= v_max
      and (exists (select from device_assignment.orphaned_devices o where o.id = d.id)
           or exists (select from device_assignment.stale_devices s where s.id = d.id))
  ),
  exhausted as (
    update public.devices d
       set status = 'error',
           last_error = 'max_reassignments_exceeded: moved ' || d.reassign_count
                        || ' times without producing a QR',
           assigned_server_id = null,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = null,
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from due
     where d.id = due.id
    returning d.id, due.assigned_server_id as from_server_id, d.assignment_epoch
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor)
    select x.id, x.from_server_id, null, x.assignment_epoch, 'maintenance', p_actor
    from exhausted x
  )
  select x.id, 'moved_to_error'::text, x.from_server_id, null::uuid from exhausted x;

  select array_agg(o.id) into v_orphaned
  from device_assignment.orphaned_devices o
  where o.id = any(v_locked)
    and o.reassign_count < v_max
    and device_assignment.cooldown_remaining(o.last_reassigned_at) = interval '0';

  select array_agg(s.id) into v_stale
  from device_assignment.stale_devices s
  where s.id = any(v_locked)
    and s.reassign_count < v_max
    and device_assignment.cooldown_remaining(s.last_reassigned_at) = interval '0';

  return query
    select a.device_id,
           case when a.to_server_id is null then 'left_unassigned' else 'reassigned_orphan' end,
           a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_orphaned, 'server_inactive', p_actor) a;

  return query
    select a.device_id, 'reassigned_stale'::text, a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_stale, 'stale_qr', p_actor, true) a;
end;
$$;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;
