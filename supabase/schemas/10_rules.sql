-- The rules: when a server is live, when a device is orphaned or stale, and
-- the one writer of every assignment change (assign_devices, move_devices).

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

-- Who is calling -------------------------------------------------------------------------
-- The one decision of who the caller is, from the request's JWT claims (what
-- PostgREST sets; auth.jwt() reads them):
--   server:<name>  role authenticated with app_metadata.device_backend = <name>:
--                  a backend account (app_metadata is set only with the secret
--                  key; a user cannot change their own);
--   operator       role service_role: the project's secret key;
--   user:<uuid>    any other signed-in user;
--   anon           a request without a user;
--   system         no claims at all: a database session (pg_cron, psql, a
--                  migration), which only the database's own roles open.
create or replace function device_assignment.caller()
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_claims jsonb := auth.jwt();
  v_backend jsonb := v_claims #> '{app_metadata,device_backend}';
begin
  if v_claims is null or v_claims = '{}'::jsonb then
    return 'system';
  end if;
  if v_claims ->> 'role' = 'service_role' then
    return 'operator';
  end if;
  if v_claims ->> 'role' = 'authenticated' and jsonb_typeof(v_backend) = 'string'
     and length(v_backend #>> '{}') between 1 and 200 then
    return 'server:' || (v_backend #>> '{}');
  end if;
  if v_claims ->> 'role' = 'authenticated' and v_claims ->> 'sub' is not null then
    return 'user:' || (v_claims ->> 'sub');
  end if;
  return 'anon';
end;
$$;

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

-- The one mapping from a server's report to the code owners see in
-- devices.last_error (its text stays private: 20_error_text.sql). A code maps
-- to itself, so the column can be read whatever the device's status became.
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
    -- "<code>: <text>" with a documented failure class (25_failures.sql).
    when exists (select from device_assignment.failure_classes() f
                  where f.code = split_part(p_last_error, ':', 1)) then split_part(p_last_error, ':', 1)
    when p_status = 'qr_timeout' then 'qr_timeout'
    when p_status = 'disconnected' then 'disconnected'
    else 'server_error'
  end;
end;
$$;

-- A server is live when it is enabled, active, healthy, and heartbeated within
-- the timeout; so no assignment rule ever picks a disabled server.
create or replace view device_assignment.live_servers as
select s.id, s.server_name, s.is_active, s.is_healthy, s.current_load, s.max_capacity,
  s.last_health_ping, s.metadata, s.created_at, s.updated_at, s.is_enabled
from public.backend_servers s
cross join public.assignment_settings cfg
where s.is_active
  and s.is_healthy
  and s.is_enabled
  and s.last_health_ping > now() - cfg.heartbeat_timeout;

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

create or replace view device_assignment.stale_resumes as
select d.*
from public.devices d
join device_assignment.live_servers l on l.id = d.assigned_server_id
cross join public.assignment_settings cfg
where d.status = 'reconnecting'
  and d.assigned_at < now() - cfg.connecting_grace;

-- Failover rule ----------------------------------------------------------------------------
-- A session nobody holds: a device that is linked (`connected`) or being resumed
-- (`reconnecting`) whose server is missing or not live. Two halves, like
-- orphaned_devices, each reached through its own partial index.
create or replace view device_assignment.sessions_to_fail_over as
select d.*
from public.devices d
where d.status = any(device_assignment.statuses('holds_session'))
  and d.assigned_server_id is null
union all
select d.*
from public.backend_servers s
join public.devices d on d.assigned_server_id = s.id
                      and d.status = any(device_assignment.statuses('holds_session'))
where not exists (select from device_assignment.live_servers l where l.id = s.id);

-- The same rule, enumerated: every orphaned device's id, each half reached
-- through its own index, so finding none reads no device. (The planner, left
-- to itself with the view, guesses a third of the servers are not live and
-- hash-joins every connecting device; OFFSET 0 keeps the per-server probe.)
-- operator_api.test.sql checks that it and the view always agree.
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

-- The same rule, enumerated without reading a device when none qualifies (see
-- connecting_on_non_live_servers for why OFFSET 0).
create or replace function device_assignment.session_to_fail_over_ids()
returns setof uuid
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
    select d.id from public.devices d
    where d.status = 'reconnecting' and d.assigned_server_id is null
    union all
    select d.id from public.devices d
    where d.status = 'connected' and d.assigned_server_id is null
    union all
    select x.id
    from public.backend_servers s
    cross join lateral (
      select d.id
      from public.devices d
      where d.assigned_server_id = s.id and d.status = any(device_assignment.statuses('holds_session'))
      offset 0
    ) x
    where not exists (select from device_assignment.live_servers l where l.id = s.id);
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

-- Moves devices to the servers plan_assignment picks, through the one writer.
-- A device for which no server has room is left unassigned for the next claim;
-- a device that was already unassigned and still finds no room is left
-- untouched. Rows locked elsewhere are skipped, never waited for.
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
  v_ids uuid[];
  v_to uuid[];
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

  select array_agg(p.device_id), array_agg(p.to_server_id) into v_ids, v_to
  from device_assignment.plan_assignment(v_locked, p_avoid_current, p_exclude_server) p
  where p.to_server_id is not null or p.from_server_id is not null;

  return query
    select m.device_id, m.from_server_id, m.to_server_id, m.epoch
    from device_assignment.move_devices(v_ids, v_to, p_reason, p_actor) m;
end;
$$;

-- The healing policy, shared by get_device_qr (one device) and maintenance (all):
-- lock the candidates, then decide from what is committed now, so two healers
-- never move the same device twice. Orphaned and stale devices past
-- max_reassignments go to `error`; those in cooldown wait; the rest move.
-- Sessions nobody holds fail over at once, whatever their budget or cooldown.
create or replace function device_assignment.heal_devices(p_device_ids uuid[], p_actor text)
returns table (device_id uuid, action text, from_server_id uuid, to_server_id uuid)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_due uuid[];
  v_orphaned uuid[];
  v_stale uuid[];
  v_failover uuid[];
  v_max integer;
begin
  select array_agg(l.id) into v_locked
  from (
    select d.id from public.devices d
    where d.id = any(p_device_ids) and d.status = any(device_assignment.statuses('needs_server'))
    order by d.id
    for update skip locked
  ) l;
  if v_locked is null then
    return;
  end if;

  select cfg.max_reassignments into v_max from public.assignment_settings cfg;

  select array_agg(d.id) into v_due
  from public.devices d
  where d.id = any(v_locked)
    and d.reassign_count >= v_max
    and (exists (select from device_assignment.orphaned_devices o where o.id = d.id)
         or exists (select from device_assignment.stale_devices s where s.id = d.id));

  return query
    select m.device_id, 'moved_to_error'::text, m.from_server_id, null::uuid
    from device_assignment.move_devices(v_due, array_fill(null::uuid, array[coalesce(cardinality(v_due), 0)]),
                                        'maintenance', p_actor, 'error') m;
  update public.devices d
     set last_error = 'max_reassignments_exceeded: moved ' || d.reassign_count
                      || ' times without producing a QR'
   where d.id = any(v_due);

  -- Each locked id by its key, as claim_devices decides (see there why).
  select array_agg(o.id) into v_orphaned
  from unnest(v_locked) l(id)
  cross join lateral (select o.* from device_assignment.orphaned_devices o
                      where o.id = l.id offset 0) o
  where o.reassign_count < v_max
    and device_assignment.cooldown_remaining(o.last_reassigned_at) = interval '0';

  select array_agg(s.id) into v_stale
  from unnest(v_locked) l(id)
  cross join lateral (select s.* from device_assignment.stale_devices s
                      where s.id = l.id offset 0) s
  where s.reassign_count < v_max
    and device_assignment.cooldown_remaining(s.last_reassigned_at) = interval '0';

  select array_agg(f.id) into v_failover
  from unnest(v_locked) l(id)
  cross join lateral (select f.id from device_assignment.sessions_to_fail_over f
                      where f.id = l.id offset 0) f;

  return query
    select a.device_id,
           case when a.to_server_id is null then 'left_unassigned' else 'reassigned_orphan' end,
           a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_orphaned, 'server_inactive', p_actor) a;

  return query
    select a.device_id, 'reassigned_stale'::text, a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_stale, 'stale_qr', p_actor, true) a;

  return query
    select a.device_id,
           case when a.to_server_id is null then 'left_unassigned' else 'session_failover' end,
           a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_failover, 'session_failover', p_actor) a;
end;
$$;

-- The one writer of every move, recording who called: the credential behind
-- the change, whatever path the change took.
create or replace function device_assignment.move_devices(
  p_device_ids uuid[],
  p_to_server_ids uuid[],
  p_reason text,
  p_actor text,
  p_status text default null,
  p_error text default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint, status text)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_spends boolean := p_reason not in ('claimed', 'session_failover');
  v_moved_ids uuid[];
  v_from uuid[];
  v_to uuid[];
  v_epochs bigint[];
  v_status text[];
  v_live_from uuid[];
begin
  if coalesce(cardinality(p_device_ids), 0) = 0 then
    return;
  end if;

  with plan as (
    select m.device_id, m.to_server_id, d.assigned_server_id as from_server_id,
           case
             when p_status is not null then p_status
             when p_reason = 'session_failover' then device_assignment.waiting_status(d.id)
             else d.status
           end as new_status,
           d.status as old_status
    from unnest(p_device_ids, p_to_server_ids) as m(device_id, to_server_id)
    -- One key lookup per device (fenced): joined plainly, a small table is
    -- read whole into a hash for every move.
    cross join lateral (select d.id, d.assigned_server_id, d.status from public.devices d
                        where d.id = m.device_id offset 0) d
  ),
  moved as (
    update public.devices d
       set assigned_server_id = p.to_server_id,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = case when p.to_server_id is null then null else now() end,
           last_reassigned_at = case when v_spends and p.to_server_id is not null then now()
                                     else d.last_reassigned_at end,
           reassign_count = case
                              when p.new_status = 'connecting' and p.old_status <> 'connecting'
                                   and p_reason <> 'server_failure' then 0
                              when v_spends and p.to_server_id is not null then d.reassign_count + 1
                              else d.reassign_count
                            end,
           status = p.new_status,
           connecting_since = case
                                when p.new_status = any(device_assignment.statuses('waits_for_server'))
                                     and p.old_status is distinct from p.new_status then now()
                                else d.connecting_since
                              end,
           last_error = case when p_status is not null then p_error else d.last_error end,
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from plan p
     where d.id = p.device_id
    returning d.id, p.from_server_id, p.to_server_id, d.assignment_epoch, d.status
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor, caller)
    select m.id, m.from_server_id, m.to_server_id, m.assignment_epoch, p_reason, p_actor,
           device_assignment.caller()
    from moved m
  )
  select array_agg(m.id), array_agg(m.from_server_id), array_agg(m.to_server_id),
         array_agg(m.assignment_epoch), array_agg(m.status)
    into v_moved_ids, v_from, v_to, v_epochs, v_status
  from moved m;

  if v_moved_ids is null then
    return;
  end if;

  -- Only live leaving servers: see above.
  select array_agg(f.id) into v_live_from
  from unnest(v_from) f(id)
  where exists (select from device_assignment.live_servers l where l.id = f.id);

  -- Server rows are locked in id order before their load changes, so two
  -- transactions moving devices between the same servers never deadlock.
  -- NO KEY UPDATE, like the load update itself, does not conflict with the
  -- KEY SHARE locks that the devices foreign key took above.
  perform from public.backend_servers s
   where s.id = any(v_live_from) or s.id = any(v_to)
   order by s.id
   for no key update;

  update public.backend_servers s
     set current_load = greatest(coalesce(s.current_load, 0) + c.delta, 0)
    from (
      select server_id, sum(delta)::integer as delta
      from (
        select unnest(v_to) as server_id, 1 as delta
        union all
        select unnest(v_live_from), -1
      ) changes
      where server_id is not null
      group by server_id
    ) c
   where s.id = c.server_id and c.delta <> 0;

  return query
    select * from unnest(v_moved_ids, v_from, v_to, v_epochs, v_status);
end;
$$;

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

create or replace function device_assignment.refuse_audit_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' and current_setting('device_assignment.audit_purge', true) = 'on' then
    return old;
  end if;
  -- Raised here rather than through raise_api_error: a trigger runs as the
  -- role that fired it, which may not execute the bundle's internals.
  raise exception using
    message = 'audit_append_only',
    errcode = 'PT403',
    hint = 'device_assignment_events is append-only; rows leave only through purge_history.';
end;
$$;

create trigger device_assignment_events_append_only
  before delete or update on public.device_assignment_events
  for each row
  execute function device_assignment.refuse_audit_change();

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.is_qr_fresh(timestamp with time zone),
  device_assignment.cooldown_remaining(timestamp with time zone),
  device_assignment.interval_ms(interval),
  device_assignment.raise_api_error(text,integer,jsonb,text),
  device_assignment.caller(),
  device_assignment.current_user_id(),
  device_assignment.error_code(text,text),
  device_assignment.connecting_on_non_live_servers(),
  device_assignment.orphaned_device_ids(),
  device_assignment.session_to_fail_over_ids(),
  device_assignment.plan_assignment(uuid[],boolean,uuid),
  device_assignment.assign_devices(uuid[],text,text,boolean,boolean,uuid),
  device_assignment.heal_devices(uuid[],text),
  device_assignment.move_devices(uuid[],uuid[],text,text,text,text),
  device_assignment.move_stale_resumes(text),
  device_assignment.refuse_audit_change()
from public, anon, authenticated, service_role;
